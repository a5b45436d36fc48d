"""livemig.core.prove: Z3 proofs of the invariant catalogue (placeholder, filled below)."""
