"""Hand-written solutions (completions of our translated prompts) for a few problems per
language, one right and one subtly wrong each. The tests use them to trust the translation (the
right ones pass, the wrong ones fail) and throughput.py to time the executors. The problems cover
each kind of translated type: list of floats, approximate float, pair, optional, dict, pair of
optionals, list of strings. Python's right solutions are the dataset's canonical ones."""

from __future__ import annotations

RIGHT: dict[str, dict[str, str]] = {
    "java": {
        "HumanEval/0": """\
        for (int i = 0; i < numbers.size(); i++)
            for (int j = i + 1; j < numbers.size(); j++)
                if (Math.abs(numbers.get(i) - numbers.get(j)) < threshold) return true;
        return false;
    }
""",
        "HumanEval/2": """\
        return number % 1.0;
    }
""",
        "HumanEval/8": """\
        long sum = 0, product = 1;
        for (long n : numbers) { sum += n; product *= n; }
        return Pair.with(sum, product);
    }
""",
        "HumanEval/12": """\
        if (strings.isEmpty()) return Optional.empty();
        String best = strings.get(0);
        for (String s : strings) if (s.length() > best.length()) best = s;
        return Optional.of(best);
    }
""",
        "HumanEval/111": """\
        HashMap<String, Long> counts = new HashMap<>();
        for (String w : test.split(" ")) if (!w.isEmpty()) counts.merge(w, 1L, Long::sum);
        long most = counts.values().stream().mapToLong(Long::longValue).max().orElse(0L);
        HashMap<String, Long> result = new HashMap<>();
        for (Map.Entry<String, Long> e : counts.entrySet())
            if (e.getValue() == most) result.put(e.getKey(), most);
        return result;
    }
""",
        "HumanEval/136": """\
        Optional<Long> neg = Optional.empty(), pos = Optional.empty();
        for (long x : lst) {
            if (x < 0 && (neg.isEmpty() || x > neg.get())) neg = Optional.of(x);
            if (x > 0 && (pos.isEmpty() || x < pos.get())) pos = Optional.of(x);
        }
        return Pair.with(neg, pos);
    }
""",
        "HumanEval/148": """\
        List<String> names = List.of("Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn",
                                     "Uranus", "Neptune");
        int a = names.indexOf(planet1), b = names.indexOf(planet2);
        ArrayList<String> result = new ArrayList<>();
        if (a < 0 || b < 0 || a == b) return result;
        for (int i = Math.min(a, b) + 1; i < Math.max(a, b); i++) result.add(names.get(i));
        return result;
    }
""",
    },
    "cpp": {
        "HumanEval/0": """\
    for (size_t i = 0; i < numbers.size(); i++)
        for (size_t j = i + 1; j < numbers.size(); j++)
            if (std::abs(numbers[i] - numbers[j]) < threshold) return true;
    return false;
}
""",
        "HumanEval/2": """\
    return number - std::floor(number);
}
""",
        "HumanEval/8": """\
    long sum = 0, product = 1;
    for (long n : numbers) { sum += n; product *= n; }
    return {sum, product};
}
""",
        "HumanEval/12": """\
    if (strings.empty()) return std::nullopt;
    std::string best = strings[0];
    for (const auto& s : strings) if (s.size() > best.size()) best = s;
    return best;
}
""",
        "HumanEval/111": """\
    std::map<std::string, long> counts;
    std::stringstream words(test);
    std::string w;
    while (words >> w) counts[w]++;
    long most = 0;
    for (const auto& [k, v] : counts) most = std::max(most, v);
    std::map<std::string, long> result;
    for (const auto& [k, v] : counts) if (v == most) result[k] = v;
    return result;
}
""",
        "HumanEval/136": """\
    std::optional<long> neg, pos;
    for (long x : lst) {
        if (x < 0 && (!neg || x > *neg)) neg = x;
        if (x > 0 && (!pos || x < *pos)) pos = x;
    }
    return {neg, pos};
}
""",
        "HumanEval/148": """\
    std::vector<std::string> names = {"Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn",
                                      "Uranus", "Neptune"};
    long a = std::find(names.begin(), names.end(), planet1) - names.begin();
    long b = std::find(names.begin(), names.end(), planet2) - names.begin();
    std::vector<std::string> result;
    if (a == 8 || b == 8 || a == b) return result;
    for (long i = std::min(a, b) + 1; i < std::max(a, b); i++) result.push_back(names[i]);
    return result;
}
""",
    },
    "javascript": {
        "HumanEval/0": """\
  for (let i = 0; i < numbers.length; i++)
    for (let j = i + 1; j < numbers.length; j++)
      if (Math.abs(numbers[i] - numbers[j]) < threshold) return true;
  return false;
}
""",
        "HumanEval/2": """\
  return number % 1.0;
}
""",
        "HumanEval/8": """\
  let sum = 0, product = 1;
  for (const n of numbers) { sum += n; product *= n; }
  return [sum, product];
}
""",
        "HumanEval/12": """\
  if (strings.length === 0) return undefined;
  let best = strings[0];
  for (const s of strings) if (s.length > best.length) best = s;
  return best;
}
""",
        "HumanEval/111": """\
  const counts = {};
  for (const w of test.split(" ")) if (w !== "") counts[w] = (counts[w] || 0) + 1;
  const most = Math.max(0, ...Object.values(counts));
  const result = {};
  for (const [k, v] of Object.entries(counts)) if (v === most) result[k] = v;
  return result;
}
""",
        "HumanEval/136": """\
  let neg = undefined, pos = undefined;
  for (const x of lst) {
    if (x < 0 && (neg === undefined || x > neg)) neg = x;
    if (x > 0 && (pos === undefined || x < pos)) pos = x;
  }
  return [neg, pos];
}
""",
        "HumanEval/148": """\
  const names = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"];
  const a = names.indexOf(planet1), b = names.indexOf(planet2);
  if (a < 0 || b < 0 || a === b) return [];
  return names.slice(Math.min(a, b) + 1, Math.max(a, b));
}
""",
    },
}

# Each wrong solution differs from the right one by a plausible slip that some test catches.
_SLIPS: dict[str, dict[str, tuple[str, str]]] = {
    "java": {
        "HumanEval/0": ("< threshold", "<= threshold + 1"),
        "HumanEval/2": ("number % 1.0", "Math.floor(number)"),
        "HumanEval/8": ("product = 1", "product = 0"),
        "HumanEval/12": ("s.length() > best", "s.length() >= best"),
        "HumanEval/111": ("if (e.getValue() == most) ", ""),
        "HumanEval/136": ("x > 0 &&", "x >= 0 &&"),
        "HumanEval/148": ("Math.min(a, b) + 1", "Math.min(a, b)"),
    },
    "cpp": {
        "HumanEval/0": ("< threshold", "<= threshold + 1"),
        "HumanEval/2": ("number - std::floor(number)", "std::floor(number)"),
        "HumanEval/8": ("product = 1", "product = 0"),
        "HumanEval/12": ("s.size() > best", "s.size() >= best"),
        "HumanEval/111": ("if (v == most) ", ""),
        "HumanEval/136": ("x > 0 &&", "x >= 0 &&"),
        "HumanEval/148": ("std::min(a, b) + 1", "std::min(a, b)"),
    },
    "javascript": {
        "HumanEval/0": ("< threshold", "<= threshold + 1"),
        "HumanEval/2": ("number % 1.0", "Math.floor(number)"),
        "HumanEval/8": ("product = 1", "product = 0"),
        "HumanEval/12": ("s.length > best", "s.length >= best"),
        "HumanEval/111": ("if (v === most) ", ""),
        "HumanEval/136": ("x > 0 &&", "x >= 0 &&"),
        "HumanEval/148": ("Math.min(a, b) + 1", "Math.min(a, b)"),
    },
}


def wrong(language: str, task_id: str) -> str:
    before, after = _SLIPS[language][task_id]
    right = RIGHT[language][task_id]
    if before not in right:
        raise KeyError(f"slip {before!r} not in the {language} solution of {task_id}")
    return right.replace(before, after, 1)


WRONG: dict[str, dict[str, str]] = {
    lang: {task: wrong(lang, task) for task in slips} for lang, slips in _SLIPS.items()
}
