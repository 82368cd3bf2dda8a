"""Prints the benchmark tables (Markdown) from one run of bench/run.sh:
criterion's medians under target/criterion, the cold-start and side-by-side
JSON files next to them."""

from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRITERION = ROOT / "target" / "criterion"
SIZES = ["16B", "1KiB", "64KiB", "1MiB"]


def medians() -> dict[str, float]:
    """full benchmark id -> median in nanoseconds."""
    out = {}
    for bench in CRITERION.glob("**/new/benchmark.json"):
        meta = json.loads(bench.read_text())
        est = json.loads((bench.parent / "estimates.json").read_text())
        out[meta["full_id"]] = est["median"]["point_estimate"]
    return out


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def fmt(ns: float | None) -> str:
    if ns is None:
        return "–"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    m = medians()
    g = m.get
    print("### Boundary: memory backend, one call\n")
    rows = []
    for op in ["serialize", "deserialize"]:
        for size in SIZES:
            p = f"boundary/memory/{op}/{size}"
            so, tr, di, fl = g(f"{p}/so"), g(f"{p}/trait"), g(f"{p}/direct"), g(f"{p}/floor")
            lent = g(f"{p}/so-lent")
            rows.append([op, size, fmt(so), fmt(lent), fmt(tr), fmt(di), fmt(fl), ratio(so, tr), ratio(lent, tr), ratio(tr, di)])
    print(table(["op", "size", ".so", ".so lent", "trait", "direct", "floor (map)", ".so / trait", "lent / trait", "trait / direct"], rows))
    so_call, local_call = g("boundary/memory/call/so-lent"), g("boundary/memory/call/trait")
    if so_call is not None and local_call is not None:
        print(f"\nOne call that does no work (a 16 B serialize the backend keeps inline), through the host's interface: "
              f".so {fmt(so_call)}, in-process {fmt(local_call)}; the boundary's fixed cost {fmt(so_call - local_call)}.")

    print("\n### Boundary: fs backend, one call\n")
    rows = []
    for op in ["serialize", "deserialize"]:
        for size in SIZES:
            p = f"boundary/fs/{op}/{size}"
            so, tr, fl = g(f"{p}/so"), g(f"{p}/trait"), g(f"{p}/floor")
            lent = g(f"{p}/so-lent")
            over = None if so is None or fl is None else so - fl
            rows.append([op, size, fmt(so), fmt(lent), fmt(tr), fmt(fl), fmt(over), ratio(so, tr)])
    print(table(["op", "size", ".so", ".so lent", "trait", "floor (write+fsync+rename / read)", ".so − floor", ".so / trait"], rows))

    print("\n### Boundary, paired: `.so` against in-process, through the host's interface\n")
    rows = []
    for name in ["memory", "fs"]:
        f = CRITERION / "boundary_paired" / f"{name}.json"
        if not f.exists():
            continue
        for r in json.loads(f.read_text()):
            over = r.get("over_floor_ns")
            rows.append([r["backend"], r["op"], r["size"], fmt(r["so_ns"]), fmt(r["local_ns"]),
                         f"{r['ratio']:.2f}×", f"{r['ratio_q1']:.2f}–{r['ratio_q3']:.2f}",
                         fmt(r.get("floor_ns")), "–" if over is None else ("−" if over < 0 else "+") + fmt(abs(over)),
                         "–" if over is None else f"{r['over_floor_ratio']:.2f}×"])
    if rows:
        print(table(["backend", "op", "size", ".so", "in-process", ".so / in-process, median of rounds", "quartiles",
                     "floor", ".so − floor, median of rounds", ".so / floor"], rows))

    print("\n### Accessors, one thread (µs per operation)\n")
    rows = []
    for backend in ["none", "memory", "fs"]:
        for store in ["map", "sqlite-memory", "sqlite-file"]:
            for size in SIZES:
                p = f"accessor/{backend}/{store}/{size}"
                rows.append([backend, store, size, fmt(g(f"{p}/set")), fmt(g(f"{p}/get")), fmt(g(f"{p}/pair"))])
    print(table(["backend", "store", "size", "set", "get", "set+get"], rows))

    print("\n### Threads: 1 against 2 (wall time per operation, 1 KiB values)\n")
    rows = []
    for label, allocator in [("", "glibc default"), ("tcache-off/", "glibc, tcache_count=0")]:
        for work in ["memory/pair", "serde_json/render+parse"]:
            one, two = g(f"{label}threads/{work}/1KiB/1"), g(f"{label}threads/{work}/1KiB/2")
            if one is None:
                continue
            rows.append([work, allocator, fmt(one), fmt(two), ratio(one, two)])
    print(table(["work", "allocator", "1 thread", "2 threads", "throughput 2 vs 1"], rows))

    print("\n### UTF-8 check of a value read back: statehost's against std's\n")
    rows = []
    for kind, text in [("ascii", "ASCII"), ("mixed", "non-ASCII every 6th character")]:
        for size in ["16B", "96B"] + SIZES[1:]:
            ours, std = g(f"utf8/{kind}/{size}/statehost"), g(f"utf8/{kind}/{size}/std")
            if ours is not None:
                rows.append([text, size, fmt(std), fmt(ours), ratio(std, ours)])
    print(table(["text", "size", "std::str::from_utf8", "statehost::backend::utf8", "std / statehost"], rows))

    print("\n### Cold start: load + construct in a fresh process\n")
    rows = []
    for name in ["memory", "fs"]:
        f = CRITERION / "coldstart" / f"{name}.json"
        if f.exists():
            d = json.loads(f.read_text())
            rows.append([name, fmt(d["median_ns"]), str(d["samples"])])
    print(table(["plugin", "median", "samples"], rows))

    ours_f = CRITERION / "side_by_side" / "statehost.json"
    theirs_f = CRITERION / "side_by_side" / "airflow.json"
    rounds_f = CRITERION / "side_by_side" / "rounds.json"
    if ours_f.exists() and theirs_f.exists():
        ours, theirs = json.loads(ours_f.read_text()), json.loads(theirs_f.read_text())
        # Airflow's rounds ran between ours: each pair of rounds gives a
        # ratio under the same stretch of the machine.
        rounds = json.loads(rounds_f.read_text()) if rounds_f.exists() else None
        print("\n### Side by side with Airflow's accessors (µs per operation, N = 20000 keys)\n")
        if rounds:
            print(f"Airflow's rounds alternated with statehost's: {len(rounds['statehost'])} of each.\n")
        rows = []
        # memory-floor: the least work of a memory pair in plain maps (no
        # check, lock or plugin boundary), against Airflow's memory backend.
        for backend in ["none", "memory", "memory-inline", "memory-floor", "fs", "fs-inline"]:
            if backend not in ours:
                continue
            airflow = backend.removesuffix("-inline").removesuffix("-floor")
            for size in ["16", "1024"]:
                o, t = ours[backend][size], theirs[airflow][size]
                for op in ["set", "get", "pair"]:
                    row = [backend, f"{size} B", op, f"{t[op]:.2f}", f"{o[op]:.2f}", f"{t[op] / o[op]:.1f}×"]
                    if rounds:
                        each = sorted(a[airflow][size][op] / s[backend][size][op]
                                      for s, a in zip(rounds["statehost"], rounds["airflow"]))
                        row += [f"{each[len(each) // 2]:.1f}×", f"{each[0]:.1f}–{each[-1]:.1f}"]
                    rows.append(row)
        header = ["backend", "value", "op", "Airflow 1.3.2", "statehost", "speed-up"]
        if rounds:
            header += ["speed-up, median of round pairs", "lowest–highest"]
        print(table(header, rows))
    else:
        print("\n(side-by-side results missing: run bench/run.sh)", file=sys.stderr)

    backends_f = CRITERION / "side_by_side" / "backends-rounds.jsonl"
    if backends_f.exists():
        # One line per process: {backend: {size: {set, get, pair, n}}}, every
        # backend once per round, rounds one after the other.
        rounds: dict[str, list[dict]] = {}
        for line in backends_f.read_text().splitlines():
            for backend, sizes in json.loads(line).items():
                rounds.setdefault(backend, []).append(sizes)
        count = max((len(r) for r in rounds.values()), default=0)
        print("\n### Airflow's accessors with each worker-side backend (µs per operation)\n")
        print(f"Median of {count} rounds; each round runs every backend once, one process each.\n")
        results = {b: {size: {op: median([r[size][op] for r in runs]) for op in ("set", "get", "pair", "n")}
                       for size in runs[0]} for b, runs in rounds.items()}
        rows = []
        python_files = [b for b in ["airflow-fs", "common-io"] if b in results]
        for backend, sizes in results.items():
            for size, r in sizes.items():
                label = {"16": "16 B", "1024": "1 KiB", "1048576": "1 MiB"}.get(size, size)
                best = min((results[b][size]["pair"] for b in python_files), default=None)
                vs = "–" if backend != "statehost-fs" or best is None else f"{best / r['pair']:.1f}×"
                rows.append([backend, label, str(r["n"]), f"{r['set']:.1f}", f"{r['get']:.1f}", f"{r['pair']:.1f}", vs])
        print(table(["backend", "value", "keys", "set", "get", "set+get", "fastest Python file backend / this"], rows))
        if "none" in rounds and "statehost-memory" in rounds:
            # The bridge's cost: statehost-memory's pair above no backend's,
            # the two measured in the same round.
            for size, label in [("16", "16 B"), ("1024", "1 KiB")]:
                each = [s[size]["pair"] - b[size]["pair"] for s, b in zip(rounds["statehost-memory"], rounds["none"])]
                listed = ", ".join(f"{d:+.1f}" for d in each)
                print(f"\nstatehost-memory's pair above no backend's, {label}, per round: {listed} µs; "
                      f"median {median(each):+.1f} µs")

    stores_f = CRITERION / "stores" / "results.json"
    if stores_f.exists():
        print("\n### Metadata stores under concurrent workers (16 B values, no backend)\n")
        rows = [[r["store"], str(r["workers"]), f"{r['set_us']:.1f}", f"{r['get_us']:.1f}", f"{r['ops_per_s']:.0f}"]
                for r in json.loads(stores_f.read_text())]
        print(table(["store", "workers", "set µs", "get µs", "ops/s"], rows))

    over_f = CRITERION / "overwrite" / "results.json"
    if over_f.exists():
        print("\n### Replacing a value: fresh keys against overwrites (µs per set)\n")
        rows = []
        for r in json.loads(over_f.read_text()):
            cost = r["overwrite_delete_us"] - r["fresh_us"]
            rows.append([r["backend"], f"{r['size']} B", f"{r['fresh_us']:.1f}", f"{r['overwrite_us']:.1f}",
                         f"{r['overwrite_delete_us']:.1f}", f"{cost:+.1f}"])
        print(table(["backend", "value", "fresh key", "overwrite (caller)", "overwrite + delete", "delete's cost"], rows))


if __name__ == "__main__":
    main()
