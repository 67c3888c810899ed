"""The translator: types inferred as MultiPL-E does, values and prompts per language, and the
trust checks: translated tests compile against a stub, hand-written right solutions pass and
subtly wrong ones fail."""

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from submodel.bench.humaneval.analyze import (
    FLOAT,
    INT,
    STR,
    Ty,
    Untranslatable,
    analyze,
    list_of,
    optional,
)
from submodel.bench.humaneval.executors import run_samples
from submodel.bench.humaneval.problems import _specs, humaneval, load_problems
from submodel.bench.humaneval.reference import RIGHT, WRONG
from submodel.bench.humaneval.translate import TARGETS

TOOLS = {"java": "javac", "cpp": "g++", "javascript": "node"}


def needs(language):
    return pytest.mark.skipif(shutil.which(TOOLS[language]) is None,
                              reason=f"{TOOLS[language]} not installed")


def record(number):
    return humaneval()[number]


def spec(number):
    return analyze(record(number))


def test_types_from_hints_and_from_test_values():
    s = spec(0)  # List[float], float -> bool, from hints
    assert [t for _, t in s.params] == [list_of(FLOAT), FLOAT] and s.returns == Ty("bool")
    assert spec(8).returns == Ty("pair", (INT, INT))  # Tuple[int, int]
    assert spec(12).returns == optional(STR)  # Optional[str]
    # no hints at all: from the values the tests pass and expect
    assert spec(148).returns == list_of(STR)  # tuples of varying length read as a list
    assert spec(136).returns == Ty("pair", (optional(INT), optional(INT)))
    assert spec(111).returns == Ty("dict", (STR, INT))
    assert [c.tol for c in spec(2).cases] == [None, 1e-6, 1e-6]  # abs(candidate(x) - y) < 1e-6


def test_values_are_coerced_to_declared_types():
    s = spec(45)  # triangle_area(a, h) returns float; the tests compare with 7.5 etc.
    assert s.returns == FLOAT and all(isinstance(c.expected, float) for c in s.cases)
    s = spec(53)  # add(x, y): the random cases of a loop are recorded as values
    assert len(s.cases) > 100 and all(c.expected == sum(c.args) for c in s.cases)


@pytest.mark.parametrize(("number", "why"), [
    (22, "no common type"),  # List[Any]
    (10, "more than the one function"),  # a helper function with a body
    (92, "canonical solution"),  # isinstance(x, int) tells 2 from 2.0
    (137, "no common type"),  # int, float or str
])
def test_untranslatable_problems_are_refused(number, why):
    with pytest.raises(Untranslatable, match=why):
        spec(number)


def test_doctests_are_rewritten_in_each_language():
    s = spec(0)
    java = TARGETS["java"].prompt(s)
    assert ">>> hasCloseElements(new ArrayList<Double>(Arrays.asList(1.0, 2.0, 3.0)), 0.5)" in java
    assert java.rstrip().endswith(
        "public static boolean hasCloseElements(ArrayList<Double> numbers, double threshold) {")
    cpp = TARGETS["cpp"].prompt(s)
    assert "// >>> has_close_elements(std::vector<double>({1.0, 2.0, 3.0}), 0.5)\n// false" in cpp
    js = TARGETS["javascript"].prompt(spec(12))
    assert "// >>> longest([])\n// undefined" in js and "function longest(strings){" in js
    # an inline example in another style is translated as well
    assert 'largestSmallestIntegers([2, 4, 1, 3, 5, 7]) == [undefined, 1]' in \
        TARGETS["javascript"].prompt(spec(136))


def test_value_rendering():
    java, cpp, js = TARGETS["java"], TARGETS["cpp"], TARGETS["javascript"]
    t = Ty("dict", (STR, list_of(INT)))
    v = {"a": [1, -2]}
    assert java.value(v, t) == ('new HashMap<String, ArrayList<Long>>(Map.ofEntries(Map.entry('
                                '"a", new ArrayList<Long>(Arrays.asList(1L, -2L)))))')
    assert cpp.value(v, t) == 'std::map<std::string, std::vector<long>>({{std::string("a"), ' \
                              'std::vector<long>({1, -2})}})'
    assert js.value(v, t) == '{"a": [1, -2]}'
    assert java.value("a\"\n\x01", STR) == '"a\\"\\n\\001"'
    assert cpp.value(None, optional(INT)) == "std::nullopt"
    assert java.value(3, FLOAT) == "3.0"
    with pytest.raises(Untranslatable):
        js.value(2**60, INT)  # not a safe integer in JavaScript
    with pytest.raises(Untranslatable):
        java.value(2**70, INT)
    with pytest.raises(Untranslatable):
        cpp.value("é", STR)  # std::string would count bytes


def test_reserved_parameter_names_are_renamed():
    s = spec(160)  # do_algebra(operator, operand)
    assert "std::vector<std::string> operator_" in TARGETS["cpp"].prompt(s)


def stub_programs(language, limit=None):
    specs = {s.task_id: s for s in _specs()[0]}
    target = TARGETS[language]
    problems = load_problems(language, limit=limit, seed=1)
    return problems, [p.program(target.stub_body(specs[p.task_id]) + "\n") for p in problems]


def assert_stubs_compile(language, limit):
    from submodel.bench.humaneval.executors import get_executor

    problems, programs = stub_programs(language, limit)
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        results = pool.map(get_executor(language).run, programs)
    for p, result in zip(problems, results, strict=True):
        # a stub returns a default value: the tests must compile and then fail, not error out
        assert result.status == "failed", (p.task_id, result.detail)


@needs("java")
def test_java_tests_compile_against_a_stub():
    assert_stubs_compile("java", limit=40)


@needs("javascript")
def test_javascript_tests_parse_against_a_stub():
    assert_stubs_compile("javascript", limit=25)


@needs("cpp")
def test_cpp_tests_compile_against_a_stub():
    assert_stubs_compile("cpp", limit=8)


@pytest.mark.slow
@pytest.mark.parametrize("language", ["java", "cpp", "javascript"])
def test_every_translated_test_compiles_against_a_stub(language):
    if shutil.which(TOOLS[language]) is None:
        pytest.skip(f"{TOOLS[language]} not installed")
    assert_stubs_compile(language, limit=None)


@pytest.mark.parametrize(("language", "task"),
                         [(lang, task) for lang in RIGHT for task in RIGHT[lang]])
def test_hand_written_solutions_pass_and_wrong_ones_fail(language, task):
    if shutil.which(TOOLS[language]) is None:
        pytest.skip(f"{TOOLS[language]} not installed")
    [problem] = [p for p in load_problems(language) if p.task_id == task]
    ok, bad = run_samples(language, problem, [RIGHT[language][task], WRONG[language][task]])
    assert ok.passed and ok.status == "passed", ok.detail
    assert not bad.passed and bad.status == "failed", (bad.status, bad.detail)


def test_python_canonical_solutions_pass_and_wrong_ones_fail():
    problems = load_problems("python")[::16]  # a sample of 11
    completions = [p.canonical_solution for p in problems]
    for p, completion in zip(problems, completions, strict=True):
        ok, bad, broken = run_samples("python", p, [completion, "    return None\n", "    ret(\n"])
        assert ok.passed, (p.task_id, ok.detail)
        assert bad.status in ("failed", "error"), (p.task_id, bad.status, bad.detail)
        assert broken.status == "compile_error", (p.task_id, broken.status)


def test_compile_errors_are_reported_as_such():
    for language in ("java", "cpp"):
        if shutil.which(TOOLS[language]) is None:
            continue
        p = load_problems(language)[0]
        [r] = run_samples(language, p, ["        return nonsense(;\n"])
        assert r.status == "compile_error" and not r.passed and r.detail
