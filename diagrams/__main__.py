"""``python -m livemig.diagrams``: regenerate the committed diagrams and their index."""
from livemig.diagrams.output import COMMITTED_INDEX, COMMITTED_OUT, regenerate_committed

if __name__ == "__main__":
    written = regenerate_committed()
    print(f"wrote {len(written)} files: {COMMITTED_OUT} and {COMMITTED_INDEX}")
