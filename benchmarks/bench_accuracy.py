"""Near-duplicate accuracy: a labelled set scored through the public ``scrapy imgcache-*`` commands.

Not a test: it prints figures for docs/near-duplicates.md. Run from the repository root:

    ./dev bench accuracy                    # 84 base pictures, 1,680 images (46 min, 2 cores, load average 5-11)
    ./dev bench accuracy --quick            # 25 base pictures: a smoke run
    ./dev bench accuracy --at HEAD          # the package as committed at a git revision
    ./dev bench accuracy -s IMGCACHE_SIMILARITY=phash   # a setting for every command

The labelled set (benchmarks/accuracy_dataset.py, cached under benchmarks/out/accuracy-v1/):
base pictures made from the repository's own photos, each with the 19 kinds of copies of
issue 14, plus look-alikes that are different pictures (two framings of one scene, a real
stereo pair, tiles of one photo, catalogue shots of different objects on white, flat graphics of
one geometry in other colours).

What is measured, exactly as a user would:

1. Every image is put, under an opaque name and in a fixed shuffled order, in one folder,
   and ``scrapy imgcache-import FOLDER`` stores it, with default settings, in a generated
   Scrapy project whose IMGCACHE_URL is a fresh SQLite file.
2. ``scrapy imgcache-dupes --json`` lists the groups. Per kind, a copy is *found* when it
   is in the same group as its original. Every pair of images in a group is a reported
   pair; it is *correct* when both come from the same base picture (pair precision). A
   group holding images of more than one base picture is *mixed*.
3. ``scrapy imgcache-similar COPY --json`` for a sample of the copies (the command takes one
   TARGET a run, and each run starts Scrapy: ``--per-base`` copies of every base, the kinds
   taken in turn so that each is sampled about equally): the *top hit* is right when the
   nearest hit other than the copy itself (its own content hash) is an image of its own base.
4. When the results say how an image matched (``match``), the kind of copy against the
   reported ``match``: from imgcache-similar (the hit that is the copy's original) and from
   imgcache-dupes (copies whose group's reference image is their original).

The report is printed (markdown) and written to benchmarks/out/accuracy-report.json
(``accuracy-quick-report.json`` for --quick); the run's folder (images, project, cache, raw
command output) is benchmarks/out/accuracy-run[-quick]/, replaced by the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.accuracy_dataset import DATA, KIND_KEYS, KINDS, OUT, build, choose  # noqa: E402
from benchmarks.machine import archive, git_state, machine, machine_line  # noqa: E402

#: the order the images are imported in (a fixed shuffle: originals do not always come first)
ORDER_SEED = 14
#: expected from every command's exit code: 0 found something, 1 found nothing
OK_CODES = (0, 1)
LABEL = {k.key: k.label for k in KINDS}
EXPECTED = {k.key: k.expected for k in KINDS}


def log(*parts: object) -> None:
    print("accuracy:", *parts, file=sys.stderr, flush=True)


# -- the project and the commands ---------------------------------------------------------------


class Commands:
    """Runs ``scrapy imgcache-*`` in the generated project, as a user would, and times them."""

    def __init__(self, run: Path, settings: list[str], code: Path | None) -> None:
        self.project = run / "project"
        self.project.mkdir(parents=True)
        (self.project / "scrapy.cfg").write_text("[settings]\ndefault = accsettings\n")
        cache = run / "cache.sqlite3"
        (self.project / "accsettings.py").write_text(
            f'BOT_NAME = "accuracy"\nIMGCACHE_URL = {f"sqlite:///{cache}"!r}\n'
        )
        self.settings = settings
        self.env = {**os.environ}
        self.env.pop("SCRAPY_SETTINGS_MODULE", None)
        paths = [str(self.project)]
        if code is not None:
            paths.insert(0, str(code))
        self.env["PYTHONPATH"] = os.pathsep.join(paths)
        self.logs = run / "logs"
        self.logs.mkdir()

    def argv(self, name: str, *args: str) -> list[str]:
        extra = [x for s in self.settings for x in ("-s", s)]
        return [sys.executable, "-m", "scrapy", name, *args, *extra]

    def shown(self, name: str, *args: str) -> str:
        """The command as a user types it."""
        extra = [x for s in self.settings for x in ("-s", s)]
        return " ".join(["scrapy", name, *args, *extra])

    def run(self, name: str, *args: str, log_as: str | None = None) -> tuple[int, str, str, float]:
        t0 = time.perf_counter()
        proc = subprocess.run(self.argv(name, *args), cwd=self.project, env=self.env, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        if log_as:
            (self.logs / f"{log_as}.stdout").write_text(proc.stdout)
            (self.logs / f"{log_as}.stderr").write_text(proc.stderr)
        if proc.returncode not in OK_CODES:
            raise RuntimeError(f"`{self.shown(name, *args)}` exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        return proc.returncode, proc.stdout, proc.stderr, elapsed

    def python(self, code: str) -> str:
        """A line of Python in the commands' environment (the same package as they import)."""
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=self.project, env=self.env, capture_output=True, text=True
        )
        return proc.stdout.strip() if proc.returncode == 0 else f"unknown ({proc.stderr.strip()[-200:]})"


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# -- the labelled folder ------------------------------------------------------------------------


def lay_out(records: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """Every image under an opaque name (0000.jpg ...), numbered in a fixed shuffled order."""
    folder.mkdir(parents=True)
    order = list(range(len(records)))
    random.Random(ORDER_SEED).shuffle(order)
    images = []
    for number, i in enumerate(order):
        rec = records[i]
        src = DATA / rec["file"]
        dst = folder / f"{number:04d}{src.suffix}"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        images.append({**rec, "id": number, "path": str(dst), "url": dst.resolve().as_uri()})
    images.sort(key=lambda r: r["id"])
    return images


def sample_queries(images: list[dict[str, Any]], bases: list[str], per_base: int) -> list[dict[str, Any]]:
    """``per_base`` copies of every base, the kinds taken in turn over the bases (all kinds equally)."""
    by = {(r["base"], r["kind"]): r for r in images}
    out = []
    for b, base in enumerate(bases):
        kinds = {KIND_KEYS[(b * per_base + j) % len(KIND_KEYS)] for j in range(min(per_base, len(KIND_KEYS)))}
        out += [by[base, k] for k in KIND_KEYS if k in kinds]
    return out


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


# -- scoring ------------------------------------------------------------------------------------


def images_of(entry: dict[str, Any], by_url: dict[str, int]) -> list[int]:
    """The labelled images an entry stands for: one per URL (exact duplicates share an entry)."""
    urls = entry.get("urls") or [entry.get("url")]
    ids = [by_url[u] for u in urls if u in by_url]
    if not ids:
        raise RuntimeError(f"an entry with URLs {urls} is no image of the labelled set")
    return ids


def score_groups(groups: list[dict[str, Any]], images: list[dict[str, Any]], by_url: dict[str, int]) -> dict[str, Any]:
    base = {r["id"]: r["base"] for r in images}
    original = {r["base"]: r["id"] for r in images if r["kind"] == "original"}
    group_of: dict[int, int] = {}
    members: list[list[int]] = []
    matches: list[dict[int, Any]] = []  # per group: image -> its `match` (when the results carry one)
    references: list[set[int]] = []
    has_match = False
    for g, group in enumerate(groups):
        ids: list[int] = []
        match: dict[int, Any] = {}
        for e in group["images"]:
            for i in images_of(e, by_url):
                ids.append(i)
                if "match" in e:
                    has_match = True
                    match[i] = e["match"]
                if i in group_of:
                    raise RuntimeError(f"image {images[i]['path']} is in two groups")
                group_of[i] = g
        members.append(ids)
        matches.append(match)
        references.append(set(images_of(group["images"][0], by_url)))

    found: dict[str, list[bool]] = {k: [] for k in KIND_KEYS}
    confusion: dict[str, Counter[str]] = {k: Counter() for k in KIND_KEYS}
    by_base_kind: dict[str, list[bool]] = defaultdict(list)
    for r in images:
        if r["kind"] == "original":
            continue
        o = original[r["base"]]
        g = group_of.get(r["id"])
        found[r["kind"]].append(g is not None and g == group_of.get(o))
        by_base_kind[r["base_kind"]].append(found[r["kind"]][-1])
        if g is not None and o in references[g] and r["id"] in matches[g]:
            confusion[r["kind"]][str(matches[g][r["id"]])] += 1

    pairs = correct = 0
    mixed = []
    for g, ids in enumerate(members):
        n = len(ids)
        pairs += n * (n - 1) // 2
        counts = Counter(base[i] for i in ids)
        correct += sum(c * (c - 1) // 2 for c in counts.values())
        if len(counts) > 1:
            kinds = Counter(images[i]["kind"] for i in ids)
            mixed.append({"group": g + 1, "images": n, "bases": dict(counts.most_common()), "kinds": dict(kinds)})
    groups_of_base: dict[str, set[int]] = defaultdict(set)
    for i, g in group_of.items():
        groups_of_base[base[i]].add(g)
    return {
        "groups": len(members),
        "grouped_images": len(group_of),
        "largest_group": max((len(m) for m in members), default=0),
        "pairs": pairs,
        "correct_pairs": correct,
        "precision": correct / pairs if pairs else None,
        "mixed_groups": len(mixed),
        "mixed": mixed,
        "bases_split": sorted(b for b, gs in groups_of_base.items() if len(gs) > 1),
        "recall": {k: {"found": sum(v), "n": len(v)} for k, v in found.items()},
        "recall_by_base_kind": {k: {"found": sum(v), "n": len(v)} for k, v in by_base_kind.items()},
        "has_match": has_match,
        "match_confusion": {k: dict(v) for k, v in confusion.items() if v},
        "reference_kinds": dict(Counter(images[min(r)]["kind"] for r in references).most_common()),
        "_group_of": group_of,
    }


def negatives(images: list[dict[str, Any]], group_of: dict[int, int]) -> list[dict[str, Any]]:
    """Per set of look-alike bases (different pictures): how many pairs of them share a group."""
    fam: dict[str, set[str]] = defaultdict(set)
    groups: dict[str, set[int]] = defaultdict(set)
    for r in images:
        fam[r["family"]].add(r["base"])
        if r["id"] in group_of:
            groups[r["base"]].add(group_of[r["id"]])
    kinds = {r["family"]: r["base_kind"] for r in images}
    out = []
    for family in sorted(fam, key=lambda f: (kinds[f], f)):
        if family == "photos":
            continue  # whole photos are not look-alikes of each other
        members = sorted(fam[family])
        base_pairs = list(combinations(members, 2))
        merged = [(a, b) for a, b in base_pairs if groups[a] & groups[b]]
        out.append({"set": family, "bases": len(members), "pairs": len(base_pairs), "merged": merged})
    return out


def score_similar(
    results: list[dict[str, Any]], images: list[dict[str, Any]], by_url: dict[str, int]
) -> dict[str, Any]:
    base = {r["id"]: r["base"] for r in images}
    original = {r["base"]: r["id"] for r in images if r["kind"] == "original"}
    top: dict[str, list[bool]] = {k: [] for k in KIND_KEYS}
    orig_found: dict[str, list[bool]] = {k: [] for k in KIND_KEYS}
    confusion: dict[str, Counter[str]] = {k: Counter() for k in KIND_KEYS}
    misses = []
    has_match = False
    wrong: dict[str, Counter[str]] = defaultdict(Counter)  # base kind -> hits of other pictures
    for res in results:
        q = images[res["id"]]
        own = q["url"]
        others = [h for h in res["hits"] if own not in (h.get("urls") or [h.get("url")])]
        wrong[q["base_kind"]]["queries"] += 1
        wrong[q["base_kind"]]["hits"] += sum(any(base[i] != q["base"] for i in images_of(h, by_url)) for h in others)
        first = images_of(others[0], by_url) if others else []
        ok = bool(first) and all(base[i] == q["base"] for i in first)
        top[q["kind"]].append(ok)
        if not ok:
            misses.append(
                {
                    "copy": f"{q['base']}/{q['kind']}",
                    "top_hit": [f"{images[i]['base']}/{images[i]['kind']}" for i in first] or None,
                    "distance": others[0].get("distance") if others else None,
                }
            )
        hit_of_original = next((h for h in others if original[q["base"]] in images_of(h, by_url)), None)
        orig_found[q["kind"]].append(hit_of_original is not None)
        if hit_of_original is not None and "match" in hit_of_original:
            has_match = True
            confusion[q["kind"]][str(hit_of_original["match"])] += 1
        has_match = has_match or any("match" in h for h in res["hits"])
    return {
        "queries": len(results),
        "top_hit": {k: {"right": sum(v), "n": len(v)} for k, v in top.items()},
        "original_in_hits": {k: {"found": sum(v), "n": len(v)} for k, v in orig_found.items()},
        "top_hit_misses": misses,
        "other_pictures_in_hits": {k: dict(v) for k, v in wrong.items()},
        "has_match": has_match,
        "match_confusion": {k: dict(v) for k, v in confusion.items() if v},
    }


def total(counts: dict[str, dict[str, int]], key: str) -> tuple[int, int]:
    return sum(v[key] for v in counts.values()), sum(v["n"] for v in counts.values())


# -- the machine and the code -------------------------------------------------------------------


def code_version() -> str:
    """The commit measured, and whether the package had uncommitted changes."""
    state = git_state(REPO)
    if state is None:
        return "unknown"
    head, changed = state
    return f"work tree at {head}" + (
        f" + uncommitted changes in {', '.join(changed)}" if changed else " (no uncommitted changes in the package)"
    )


# -- the run ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="25 base pictures instead of 84: a smoke run")
    ap.add_argument(
        "--per-base",
        type=int,
        default=4,
        metavar="N",
        help="imgcache-similar queries per base picture (default 4; 19 = every copy; 0 = none)",
    )
    ap.add_argument("--jobs", type=int, default=2, help="imgcache-similar commands at once, and build processes")
    ap.add_argument(
        "-s",
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a Scrapy setting for every command (e.g. IMGCACHE_SIMILARITY=phash); repeatable",
    )
    ap.add_argument("--at", metavar="REV", help="run the package as committed at this git revision, not the work tree")
    ap.add_argument("--json", type=Path, help="write the report here as well")
    args = ap.parse_args(argv)
    for s in args.set:
        if "=" not in s:
            ap.error(f"-s {s}: NAME=VALUE expected")
    if not 0 <= args.per_base <= len(KIND_KEYS):
        ap.error(f"--per-base: 0 to {len(KIND_KEYS)}")

    t0 = time.perf_counter()
    command = " ".join(["./dev bench accuracy", *(argv if argv is not None else sys.argv[1:])])
    report: dict[str, Any] = {
        "command": command,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(
            ("scrapy", "pillow", "imagehash", "numpy", "scipy", "sqlalchemy", "scikit-image", "scikit-learn")
        ),
        "settings": args.set,
    }
    log("machine:", machine_line(report["machine"]))

    chosen = choose(args.quick)
    t = time.perf_counter()
    records = build(chosen, args.jobs)
    report["seconds"] = {"build": time.perf_counter() - t}
    log(f"{len(chosen)} base pictures, {len(records)} images ({report['seconds']['build']:.1f} s to build or load)")

    run = OUT / ("accuracy-run-quick" if args.quick else "accuracy-run")
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    code_dir = None
    if args.at:
        code_dir = run / "code"
        report["code"] = f"scrapy_imgcache as committed at {archive(REPO, args.at, code_dir)} (--at {args.at})"
    else:
        report["code"] = code_version()
    log("code:", report["code"])
    images = lay_out(records, run / "images")
    by_url = {r["url"]: r["id"] for r in images}
    cmd = Commands(run, args.set, code_dir)
    report["similarity_setting_default"] = cmd.python(
        "from scrapy_imgcache.config import DEFAULTS; print(DEFAULTS.get('IMGCACHE_SIMILARITY', 'none (pHash only)'))"
    )
    report["dataset"] = {
        "bases": len(chosen),
        "images": len(images),
        "by_base_kind": dict(Counter(b.kind for b in chosen)),
        "bytes": sum(r["bytes"] for r in images),
        "folder": str(DATA),
    }

    # 1. import
    folder = str(run / "images")
    cpu = children_cpu()
    _, out, err, elapsed = cmd.run("imgcache-import", folder, log_as="import")
    report["import"] = {
        "command": cmd.shown("imgcache-import", "IMAGES"),
        "summary": out.strip().splitlines()[-1] if out.strip() else "",
        "skipped": [line.strip() for line in err.splitlines() if line.startswith("  ")],
        "seconds": elapsed,
        "cpu_seconds": children_cpu() - cpu,
    }
    log(f"import: {elapsed:.1f} s: {report['import']['summary']}")

    # 2. dupes
    cpu = children_cpu()
    code, out, _, elapsed = cmd.run("imgcache-dupes", "--json", log_as="dupes")
    groups = json_lines(out) if code == 0 else []
    g = score_groups(groups, images, by_url)
    group_of = g.pop("_group_of")
    g["negatives"] = negatives(images, group_of)
    g.update(command=cmd.shown("imgcache-dupes", "--json"), seconds=elapsed, cpu_seconds=children_cpu() - cpu)
    report["dupes"] = g
    log(f"dupes: {elapsed:.1f} s: {g['groups']} groups, {g['pairs']} pairs")

    # 3. similar, for a sample of the copies
    queries = sample_queries(images, [b.name for b in chosen], args.per_base)
    cpu = children_cpu()
    t = time.perf_counter()
    done = 0

    def query(q: dict[str, Any]) -> dict[str, Any]:
        nonlocal done
        code, out, _, elapsed = cmd.run("imgcache-similar", q["path"], "--json")
        done += 1
        if done % 50 == 0:
            log(f"similar: {done}/{len(queries)}")
        return {"id": q["id"], "hits": json_lines(out) if code == 0 else [], "seconds": elapsed}

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(query, queries))
    with open(run / "logs" / "similar.jsonl", "w") as fh:
        for res in results:
            fh.write(json.dumps(res) + "\n")
    s = score_similar(results, images, by_url)
    wall = time.perf_counter() - t
    s.update(
        command=cmd.shown("imgcache-similar", "COPY", "--json"),
        per_base=args.per_base,
        jobs=args.jobs,
        seconds=wall,
        cpu_seconds=children_cpu() - cpu,
        seconds_per_query=(sum(r["seconds"] for r in results) / len(results)) if results else None,
    )
    report["similar"] = s
    log(f"similar: {len(results)} queries in {wall:.1f} s")

    report["machine"]["load_average_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report["seconds"]["total"] = time.perf_counter() - t0
    text = render(report)
    (run / "report.md").write_text(text)
    blob = json.dumps(report, indent=1, default=str)
    (run / "report.json").write_text(blob)
    path = OUT / ("accuracy-quick-report.json" if args.quick else "accuracy-report.json")
    path.write_text(blob)
    if args.json:
        args.json.write_text(blob)
    print(text)
    log(f"report: {path}; the run's folder: {run}")
    return 0


# -- the report ---------------------------------------------------------------------------------


def rate(found: int, n: int) -> str:
    return f"{found / n:.2f} ({found}/{n})" if n else "-"


def render(rep: dict[str, Any]) -> str:
    d, s, imp = rep["dupes"], rep["similar"], rep["import"]
    found, copies = total(d["recall"], "found")
    right, queries = total(s["top_hit"], "right")
    in_hits, _ = total(s["original_in_hits"], "found")
    no_hit = sum(1 for m in s["top_hit_misses"] if m["top_hit"] is None)
    precision = f"{d['precision']:.4f}" if d["precision"] is not None else "-"
    ds = rep["dataset"]
    kinds = ", ".join(f"{n} {k}" for k, n in ds["by_base_kind"].items())
    lines = [
        f"Run {rep['started']}: `{rep['command']}`, {rep['seconds']['total'] / 60:.1f} min in all",
        "",
        f"Machine: {machine_line(rep['machine'])}"
        + (f", at end {rep['machine']['load_average_at_end']}" if "load_average_at_end" in rep["machine"] else ""),
        "",
        f"Code: {rep['code']}; IMGCACHE_SIMILARITY default: {rep['similarity_setting_default']}"
        + (f"; settings: {', '.join(rep['settings'])}" if rep["settings"] else ""),
        "",
        (
            f"Labelled set: {ds['bases']} base pictures ({kinds}), {ds['images']} images "
            f"({ds['bytes'] / 2**20:.0f} MiB): each original and its {len(KIND_KEYS)} kinds of copies."
        ),
        "",
        "Commands, in a generated project (IMGCACHE_URL a fresh SQLite file, other settings default):",
        "",
        "```console",
        f"$ {imp['command']}",
        imp["summary"],
        f"$ {d['command']}",
        f"$ {s['command']}    # x {s['queries']}, {s['jobs']} at a time",
        "```",
        "",
        "| figure | measured |",
        "|---|---|",
        f"| copies in their original's group (all kinds) | {rate(found, copies)} |",
        (
            f"| pair precision (pairs within groups from one base picture) | {precision} "
            f"({d['correct_pairs']}/{d['pairs']}) |"
        ),
        f"| mixed groups (images of more than one base picture) | {d['mixed_groups']} of {d['groups']} |",
        f"| top hit is its own picture (imgcache-similar, {s['per_base']} copies a base) | {rate(right, queries)} |",
        (
            f"| top-hit misses: no hit but itself; another picture first | {no_hit}; "
            f"{len(s['top_hit_misses']) - no_hit} |"
        ),
        f"| original among the hits (same queries) | {rate(in_hits, queries)} |",
        "| hits that are another picture (same queries), by kind of base picture | "
        + "; ".join(
            f"{k} {v['hits']} in {v['queries']} queries" for k, v in s.get("other_pictures_in_hits", {}).items()
        )
        + " |",
        "| copies in their original's group, by kind of base picture | "
        + "; ".join(f"{k} {rate(v['found'], v['n'])}" for k, v in d.get("recall_by_base_kind", {}).items())
        + " |",
        f"| images in a group; largest group | {d['grouped_images']} of {ds['images']}; {d['largest_group']} |",
        f"| base pictures split over several groups | {len(d['bases_split'])} of {ds['bases']} |",
        (
            f"| time: import; dupes; similar (per query, {s['jobs']} at a time) | {imp['seconds']:.1f} s; "
            f"{d['seconds']:.1f} s; {s['seconds']:.0f} s ({s['seconds_per_query'] or 0:.2f} s) |"
        ),
        "",
        "| kind of copy | in its original's group (dupes) | top hit its own picture (similar) | original among hits |",
        "|---|---|---|---|",
    ]
    for k in KIND_KEYS:
        r, t, o = d["recall"][k], s["top_hit"][k], s["original_in_hits"][k]
        lines.append(
            f"| {LABEL[k]} | {rate(r['found'], r['n'])} | {rate(t['right'], t['n'])} | {rate(o['found'], o['n'])} |"
        )
    lines += ["", "| look-alikes that are different pictures | bases | pairs of them | pairs in one group |"]
    lines.append("|---|---|---|---|")
    for n in d["negatives"]:
        if n["pairs"]:
            lines.append(f"| {n['set']} | {n['bases']} | {n['pairs']} | {len(n['merged'])} |")
    if d["mixed"]:
        lines += ["", "Mixed groups (the largest 10): how many images of each base picture", ""]
        for m in sorted(d["mixed"], key=lambda m: -m["images"])[:10]:
            parts = ", ".join(f"{b} {c}" for b, c in m["bases"].items())
            kinds = ", ".join(f"{k} {c}" for k, c in Counter(m.get("kinds", {})).most_common(3))
            lines.append(f"- group {m['group']} ({m['images']} images; most common kinds: {kinds}): {parts}")
    refs = ", ".join(f"{k} {n}" for k, n in d["reference_kinds"].items())
    lines += ["", f"Kinds of the groups' reference images (each group's first image): {refs or 'none'}."]
    if d["has_match"] or s["has_match"]:
        lines += ["", *render_confusion(d["match_confusion"], s["match_confusion"])]
    else:
        lines += ["", "The results carry no `match`: no confusion of kind against reported match."]
    return "\n".join(lines) + "\n"


def render_confusion(dupes: dict[str, dict[str, int]], similar: dict[str, dict[str, int]]) -> list[str]:
    out = []
    for title, conf in (
        ("imgcache-similar: the `match` of the hit that is the copy's original", similar),
        ("imgcache-dupes: the `match` of copies whose group's reference is their original", dupes),
    ):
        values = sorted({v for c in conf.values() for v in c})
        out += [f"Kind of copy against `match`, {title}:", ""]
        if not values:
            out += ["(none: no copy is in a group whose reference is its original)", ""]
            continue
        out.append("| kind | " + " | ".join(values) + " | as expected |")
        out.append("|---|" + "---|" * (len(values) + 1))
        for k in KIND_KEYS:
            c = conf.get(k, {})
            n = sum(c.values())
            good = sum(v for m, v in c.items() if m in EXPECTED[k])
            cells = " | ".join(str(c.get(v, "")) for v in values)
            lines_expected = f"{good}/{n} ({'/'.join(EXPECTED[k])})" if n else "-"
            out.append(f"| {LABEL[k]} | {cells} | {lines_expected} |")
        out.append("")
    return out


if __name__ == "__main__":
    sys.exit(main())
