"""The package's shape: no import circle, and no module too long to read in one sitting."""

import ast
import pathlib

import deat_tf

PACKAGE = pathlib.Path(deat_tf.__file__).parent
LONGEST_MODULE = 800


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules():
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(path, known):
    """The deat_tf modules a file imports at module level (a name of a package is its __init__)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module in known:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    return found


def find_circle(graph):
    """One import circle of the graph as a list of modules, or None."""
    done, path = set(), []

    def visit(name):
        if name in path:
            return path[path.index(name) :] + [name]
        if name in done:
            return None
        path.append(name)
        for neighbour in sorted(graph[name]):
            circle = visit(neighbour)
            if circle:
                return circle
        path.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        circle = visit(name)
        if circle:
            return circle
    return None


def test_no_import_circle():
    known = modules()
    graph = {name: imported_modules(path, known) - {name} for name, path in known.items()}
    assert find_circle(graph) is None, " -> ".join(find_circle(graph))


def test_the_circle_finder_finds_a_circle():
    # The control of the test above.
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_reaches_the_length_limit():
    lengths = {name: len(path.read_text().splitlines()) for name, path in sorted(modules().items())}
    too_long = {name: lines for name, lines in lengths.items() if lines >= LONGEST_MODULE}
    assert not too_long, f"modules of {LONGEST_MODULE} lines or more: {too_long}"
