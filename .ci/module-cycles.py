#!/usr/bin/env python3
"""Fails when the crate's modules depend on each other in a cycle.

Reads, on stdin, the graph `cargo modules dependencies --lib --no-externs --no-sysroot --no-fns
--no-traits --no-types --no-owns` prints (cargo-modules), keeps its "uses" edges between modules,
and prints every strongly connected group of more than one module. Exit 1 if there is any.
(cargo-modules' own --acyclic also counts a type and its methods, which always refer to each other.)
"""
import re
import sys

edges = {}
for line in sys.stdin:
    m = re.search(r'"([^"]+)" -> "([^"]+)" \[label="uses"', line)
    if m and m.group(1) != m.group(2):
        edges.setdefault(m.group(1), set()).add(m.group(2))
        edges.setdefault(m.group(2), set())

# Tarjan's strongly connected components.
index, low, on, stack, groups, counter = {}, {}, set(), [], [], [0]
sys.setrecursionlimit(10000)


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        group = []
        while True:
            w = stack.pop()
            on.discard(w)
            group.append(w)
            if w == v:
                break
        if len(group) > 1:
            groups.append(sorted(group))


for v in list(edges):
    if v not in index:
        visit(v)

if not edges:
    print("module-cycles: no module dependencies read (is cargo-modules' output on stdin?)")
    sys.exit(2)
for g in groups:
    print("module cycle: " + " <-> ".join(g))
    for a in g:
        print("   " + a + " uses " + ", ".join(sorted(b for b in edges[a] if b in g)))
print(f"module-cycles: {len(edges)} modules, {sum(len(v) for v in edges.values())} uses, {len(groups)} cycles")
sys.exit(1 if groups else 0)
