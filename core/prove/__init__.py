"""livemig.core.prove: Z3 proofs of the invariant catalogue.

The spec's tables become a symbolic transition system (``encode``), the
catalogue (``livemig.spec.invariants``) becomes proof obligations
(``obligations``), BMC finds counterexamples and k-induction proves
(``engine``), and the results are compared with the catalogue's
expectations (``catalogue``).  ``counterexample`` prints traces and writes
replay tests; ``mutants`` checks that the catalogue notices a wrong spec.

    >>> from livemig.core.prove import prove_profile
    >>> [r.result for r in prove_profile("qemu-7.2")
    ...  if r.invariant == "no_postcopy_with_compress"]
    ['refuted']
"""
from livemig.core.prove.catalogue import BMC_DEPTH, MAX_K, Result, prove_all, prove_profile
from livemig.core.prove.counterexample import pytest_source, render, steps
from livemig.core.prove.encode import Encoding
from livemig.core.prove.engine import Engine
from livemig.core.prove.mutants import MutantReport, mutants, run_mutants

__all__ = [
    "BMC_DEPTH", "Encoding", "Engine", "MAX_K", "MutantReport", "Result", "mutants",
    "prove_all", "prove_profile", "pytest_source", "render", "run_mutants", "steps",
]
