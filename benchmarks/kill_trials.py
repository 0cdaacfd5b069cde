"""Kill trials: SIGKILL real ``saescale`` commands at random moments, rerun them, compare with an uninterrupted run.

Four kinds, each a real command line in a fresh process (issue 14, "kill trials survived"):

    train     saescale train --acts synthetic (n 128, d 16, 300 steps of 256 tokens, a checkpoint every 20)
    cache     saescale cache on the embedded default model (1,500 + 75 tokens in shards of 250, 8 contexts
              a forward pass, so two shards are written per forward) of every 10th document of the embedded
              corpus (37 documents; --cache-corpus default tokenizes all 368, ~10 s more per run)
    sweep     saescale sweep of a 4-member synthetic spec (n 64 and 128 x 100 and 200 steps, written to the
              work folder)
    torchrun  saescale train under torchrun --nproc-per-node 2 (gloo on CPU; as train, 160 steps), data
              parallel and with --latent-shards 2 in alternate trials, each layout with its own reference;
              the whole process tree is killed (torchrun puts each worker in its own session, so every
              process of the tree and its process group gets SIGKILL)

For each kind an uninterrupted reference runs first, with its progress (checkpoint step, shards
written, members' steps) polled every 20 ms. A trial then draws a moment uniformly between the
reference's first sign of work (run.json / manifest.json written) and its last progress (its final
files written), notes which progress the reference had reached at that moment and how long after
reaching it, starts the same command, waits for that progress, waits the same extra time and
SIGKILLs it (``--kills`` times per trial, each later kill drawn from beyond the progress the rerun
resumed from), then reruns the command, which must complete. A trial survives when no rerun
failed (every run we did not kill exited 0) and the final outputs are bit-identical to the
reference's:

    train, torchrun   every tensor of sae/sae.safetensors (torch.equal, same names, dtypes, shapes)
    cache             the sha256 of every shard file and of stats.safetensors, and manifest.json's content
    sweep             results.jsonl (every number; the output folder's path replaced by the reference's)
                      and every member's sae/sae.safetensors

    python benchmarks/kill_trials.py [--trials 5] [--seed 0] [--kinds train,cache,sweep,torchrun] [--kills 1]
    python benchmarks/kill_trials.py --at-end     # every kill at the end of the work instead (see below)

``--at-end`` replaces the random moment by the one a random kill rarely hits: all the work is saved
and the final files are not (train, torchrun: the checkpoint of the last step is published and
summary.json is not written; sweep: the same for one member, whose result.json is not written;
cache: every shard written, the cache not marked complete), polled every millisecond.

The commands run as ``python -m saescale`` in this file's repository (cwd and PYTHONPATH), so a copy
of the repository (e.g. ``git archive HEAD``) measures exactly that code. Everything is written to a
temporary folder (``--workdir``), with SAESCALE_HOME inside it (the default model is converted there
once; ``--home`` reuses a folder that already holds the conversion).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
POLL = 0.02  # seconds between progress polls
KINDS = ("train", "cache", "sweep", "torchrun")
REDRAWS = 3  # draws of a trial's first kill moment before it counts as "no kill landed"

SYNTH = ["--acts", "synthetic", "--synth-d", "16", "--synth-features", "64", "--synth-k", "4", "--n", "128",
         "--k", "4", "--batch-size", "256", "--init-tokens", "1024", "--eval-tokens", "2048", "--log-every", "5",
         "--checkpoint-every", "20", "--threads", "1", "--no-progress"]
TRAIN_STEPS, TORCHRUN_STEPS = 300, 160
TRAIN = [*SYNTH, "--tokens", str(256 * TRAIN_STEPS)]
TORCHRUN = [*SYNTH, "--tokens", str(256 * TORCHRUN_STEPS), "--dist-timeout", "60"]
CACHE = ["--n-tokens", "1500", "--shard-tokens", "250", "--harvest-batch", "8"]  # 6 train + 1 val shards, 2 a forward
CORPUS_EVERY = 10  # the cache's corpus: every 10th document of the embedded one (tokenizing all of it: ~10 s a run)
SPEC = """\
# kill_trials.py: 4 members (two n x two budgets) trained together on planted synthetic activations
[sweep]
source = "synthetic"
heldout_tokens = 2048
curve_points = 4

[grid]
n = [64, 128]
tokens = [25600, 51200]   # 100 and 200 steps of 256 tokens

[sae]
k = 4

[train]
batch_size = 256
init_tokens = 1024
checkpoint_every = 20
log_every = 5
seed = 0

[synthetic]
d = 16
features = 64
k = 4
"""


# ---- processes ---------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc)."""
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` (started in its own session), every descendant and each one's process group;
    return once none of them is alive."""
    ours = os.getpgid(0)
    pids = [proc.pid, *children(proc.pid)]
    for _ in range(100):
        for pid in pids:
            try:
                if os.getpgid(pid) != ours:
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        proc.wait()
        pids = [p for p in pids if alive(p)] + [c for p in pids for c in children(p)]
        if not pids:
            return
        time.sleep(0.05)
    raise RuntimeError(f"processes {pids} survived SIGKILL")


@dataclass
class Run:
    """One start of a command: its progress timeline (seconds since start, progress) and how it ended."""

    rc: int | None = None
    killed: bool = False
    seconds: float = 0.0
    timeline: list[tuple[float, float]] = field(default_factory=list)
    log: Path | None = None

    def tail(self) -> str:
        lines = [x for x in self.log.read_text(errors="replace").splitlines()
                 if x.strip() and not x.startswith("kill_trials.py: rc")] if self.log else []
        errors = [x for x in lines if ("Error" in x or "error:" in x) and "ChildFailedError" not in x]
        return (errors or lines or ["(no output)"])[-1][:300]


def start_run(cmd: list[str], env: dict[str, str], log: Path, progress: Callable[[], float],
              kill_at: tuple[float, float] | None = None, timeout: float = 600.0, poll: float = POLL) -> Run:
    """Run ``cmd`` to its end, or SIGKILL it ``kill_at = (progress p, delay s)``: ``s`` seconds after its
    progress first reaches ``p``."""
    run = Run(log=log)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    reached = None
    last = None
    while proc.poll() is None:
        now = time.perf_counter() - t0
        p = progress()
        if p != last:
            run.timeline.append((now, p))
            last = p
        if kill_at is not None:
            if reached is None and p >= kill_at[0]:
                reached = now
            if reached is not None and now >= reached + kill_at[1]:
                kill_tree(proc)
                run.killed = True
                break
        if now > timeout:
            kill_tree(proc)
            run.rc, run.seconds = -1, now
            with log.open("a") as f:
                f.write(f"\nkill_trials.py: timed out after {timeout:.0f} s\n")
            return run
        time.sleep(poll)
    run.rc = proc.wait()
    run.seconds = time.perf_counter() - t0
    p = progress()
    if p != last:
        run.timeline.append((run.seconds, p))
    with log.open("a") as f:  # for the record: what the poller saw
        f.write(f"\nkill_trials.py: rc {run.rc}, {'killed' if run.killed else 'not killed'} after {run.seconds:.2f} s; "
                "progress timeline (s, progress): " + " ".join(f"{t:.2f}:{p:g}" for t, p in run.timeline) + "\n")
    return run


def draw_kill(rng: random.Random, ref: Run, beyond: float) -> tuple[float, float]:
    """A moment drawn uniformly from the reference's time with progress > ``beyond``, from its first sign of
    work (progress >= 0) until its last progress (its final file written) -> (progress p then reached,
    seconds since it was reached)."""
    times = [t for t, p in ref.timeline if p > beyond and p >= 0]
    lo, hi = (times[0], ref.timeline[-1][0]) if times else (ref.seconds, ref.seconds)
    t = rng.uniform(lo, hi)
    p, since = beyond, 0.0
    for ti, pi in ref.timeline:
        if ti <= t and pi > beyond and pi >= 0:
            p, since = pi, t - ti
    return p, since


# ---- the kinds ---------------------------------------------------------------------------------

def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_progress(out: Path, final: str = "eval.json") -> float:
    """A train run folder: -1 before run.json, 0 after it, then the step of the last checkpoint (+0.5 once
    ``final`` is written: the finished SAE)."""
    if not (out / "run.json").exists():
        return -1.0
    latest = read_json(out / "checkpoints" / "latest.json") or {}
    step = float(latest.get("step", 0))
    return step + 0.5 if (out / final).exists() else step


def cache_progress(out: Path) -> float:
    """A cache folder: -1 before manifest.json, then shards written (+0.5 once complete)."""
    m = read_json(out / "manifest.json")
    if m is None:
        return -1.0
    try:
        done = sum(e is not None for s in m["splits"].values() for e in s["shards"])
    except (KeyError, TypeError, AttributeError):
        return 0.0
    return done + (0.5 if m.get("complete") else 0.0)


def sweep_progress(out: Path) -> float:
    """A sweep folder: -1 before any member's run.json, then the sum over members of their progress."""
    members = [p for p in out.iterdir() if p.is_dir()] if out.is_dir() else []
    vals = [run_progress(p, "result.json") for p in members]
    vals = [v for v in vals if v >= 0]
    if not vals:
        return -1.0
    total = 0.0
    for p in members:
        r = read_json(p / "result.json")
        total += (r["tokens"] // 256 + 0.5) if r else max(run_progress(p, "result.json"), 0.0)
    return total


def last_checkpoint_unfinished(folder: Path, steps: int, final: str) -> bool:
    """The checkpoint of the last step is published and ``final`` is not written yet."""
    latest = read_json(folder / "checkpoints" / "latest.json") or {}
    return latest.get("step") == steps and not (folder / final).exists()


def sweep_at_end(out: Path) -> bool:
    """Some member has published the checkpoint of its last step and has no result.json yet."""
    members = [p for p in out.iterdir() if p.is_dir()] if out.is_dir() else []
    return any(last_checkpoint_unfinished(m, int(m.name.rsplit("tokens_", 1)[1]) // 256, "result.json") for m in members)


def cache_at_end(out: Path) -> bool:
    """Every shard is written and the cache is not complete yet (statistics, verification)."""
    m = read_json(out / "manifest.json")
    try:
        return not m["complete"] and all(e is not None for s in m["splits"].values() for e in s["shards"])
    except (KeyError, TypeError, AttributeError):
        return False


def tensors_equal(a: Path, b: Path) -> str | None:
    """None when the two safetensors files hold bit-identical tensors, else what differs."""
    if not a.is_file() or not b.is_file():
        return f"missing {b if a.is_file() else a}"
    ta, tb = load_file(str(a)), load_file(str(b))
    if set(ta) != set(tb):
        return f"tensor names differ: {sorted(ta)} vs {sorted(tb)}"
    for k in sorted(ta):
        x, y = ta[k], tb[k]
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
            diff = (x.double() - y.double()).abs().max().item() if x.shape == y.shape else float("nan")
            return f"{a.parent.parent.name}: {k} differs (max abs diff {diff:.3g})"
    return None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_digest(folder: Path) -> dict:
    files = sorted([*folder.glob("train/*.safetensors"), *folder.glob("val/*.safetensors"), folder / "stats.safetensors"])
    return {"files": {str(p.relative_to(folder)): sha256(p) for p in files if p.is_file()},
            "manifest": read_json(folder / "manifest.json")}


def compare_cache(ref: Path, out: Path) -> str | None:
    a, b = cache_digest(ref), cache_digest(out)
    if a["files"].keys() != b["files"].keys():
        return f"shard files differ: {sorted(set(a['files']) ^ set(b['files']))}"
    bad = [k for k in a["files"] if a["files"][k] != b["files"][k]]
    if bad:
        return f"sha256 differs for {len(bad)} file(s), first {bad[0]}"
    if a["manifest"] != b["manifest"]:
        return "manifest.json content differs"
    return None


def compare_sweep(ref: Path, out: Path) -> str | None:
    ra, rb = (p / "results.jsonl" for p in (ref, out))
    if not rb.is_file():
        return "no results.jsonl"
    la = [json.loads(x) for x in ra.read_text().splitlines()]
    lb = [json.loads(x) for x in rb.read_text().replace(str(out), str(ref)).splitlines()]
    if la != lb:
        ids = [a.get("id") for a, b in zip(la, lb) if a != b] or ["(member count)"]
        keys = sorted({k for a, b in zip(la, lb) for k in set(a) | set(b) if a.get(k) != b.get(k)})
        return f"results.jsonl differs: members {ids}, keys {keys}"
    for r in la:
        why = tensors_equal(ref / r["id"] / "sae" / "sae.safetensors", out / r["id"] / "sae" / "sae.safetensors")
        if why:
            return why
    return None


@dataclass
class Kind:
    name: str
    command: Callable[[Path, int], list[str]]  # (output folder, trial) -> command line
    progress: Callable[[Path], float]
    compare: Callable[[Path, Path], str | None]  # (reference output, trial output) -> None or what differs
    variants: int = 1  # trial i uses variant i % variants; each variant has its own reference
    label: Callable[[int], str] = lambda v: ""
    at_end: Callable[[Path], bool] = lambda out: False  # --at-end: all the work is saved, the final files are not


def saescale(*args: str) -> list[str]:
    return [sys.executable, "-m", "saescale", *args]


def torchrun_cmd(out: Path, variant: int) -> list[str]:
    shards = ["--latent-shards", "2"] if variant == 1 else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "saescale",
            "--", "train", *TORCHRUN, *shards, "--out", str(out)]


def small_corpus(path: Path) -> Path:
    """Every CORPUS_EVERY-th document of the embedded corpus (State of the Union addresses, Moby-Dick) as JSONL."""
    lines = []
    for name in ("sotu.jsonl.gz", "moby_dick.jsonl.gz"):
        with gzip.open(REPO / "saescale" / "data" / "corpus" / name, "rt") as f:
            lines += [x for x in f if x.strip()]
    path.write_text("".join(lines[::CORPUS_EVERY]))
    return path


def make_kinds(work: Path, corpus: str) -> dict[str, Kind]:
    spec = work / "sweep-spec.toml"
    spec.write_text(SPEC)
    corpus = str(small_corpus(work / "corpus.jsonl")) if corpus == "sample" else corpus
    train_cmp = lambda a, b: tensors_equal(a / "sae" / "sae.safetensors", b / "sae" / "sae.safetensors")
    return {
        "train": Kind("train", lambda out, v: saescale("train", *TRAIN, "--out", str(out)), run_progress, train_cmp,
                      at_end=lambda out: last_checkpoint_unfinished(out, TRAIN_STEPS, "summary.json")),
        "cache": Kind("cache", lambda out, v: saescale("cache", *CACHE, "--corpus", corpus, "--cache-dir", str(out)),
                      cache_progress, compare_cache, at_end=cache_at_end),
        "sweep": Kind("sweep", lambda out, v: saescale("sweep", str(spec), "--out", str(out), "--threads", "1",
                                                       "--no-progress", "--no-fit"), sweep_progress, compare_sweep,
                      at_end=sweep_at_end),
        "torchrun": Kind("torchrun", torchrun_cmd, run_progress, train_cmp, variants=2,
                         label=lambda v: "--latent-shards 2" if v else "data parallel",
                         at_end=lambda out: last_checkpoint_unfinished(out, TORCHRUN_STEPS, "summary.json")),
    }


def describe(kind: str, p: float) -> str:
    """A progress value in words."""
    unit, start = {"train": ("checkpoint step", "run.json written, no checkpoint"),
                   "torchrun": ("checkpoint step", "run.json written, no checkpoint"),
                   "cache": ("shards written", "manifest written, no shard"),
                   "sweep": ("member steps checkpointed", "members started, no checkpoint")}[kind]
    if p < 0:
        return "nothing written"
    return start if p == 0 else f"{unit} {int(p)}" + (", final files written" if p % 1 else "")


def run_kind(kind: Kind, work: Path, env: dict[str, str], trials: int, kills: int, rng: random.Random,
             timeout: float, at_end: bool = False) -> tuple[int, int, int, list[str]]:
    """(survived, trials, kills that landed, detail lines) for one kind."""
    root = work / kind.name
    root.mkdir()
    refs: dict[int, tuple[Path, Run]] = {}
    notes: list[str] = []
    for v in range(min(kind.variants, trials)):
        out = root / f"reference-{v}"
        ref = start_run(kind.command(out, v), env, root / f"reference-{v}.log", lambda o=out: kind.progress(o),
                        timeout=timeout)
        refs[v] = (out, ref)
        what = f" ({kind.label(v)})" if kind.label(v) else ""
        if ref.rc != 0:
            notes.append(f"  reference{what} failed (rc {ref.rc}): {ref.tail()}")
            return 0, trials, 0, notes
        notes.append(f"  reference{what}: {ref.seconds:.1f} s, final progress {ref.timeline[-1][1] if ref.timeline else '?'}")
    survived = kills_landed = redraws = 0
    for i in range(trials):
        v = i % kind.variants
        ref_out, ref = refs[v]
        for attempt in range(REDRAWS):  # a trial whose first run finished before its kill is drawn again
            out = root / f"trial-{i}" if attempt == 0 else root / f"trial-{i}-redraw-{attempt}"
            landed, failed, reruns = run_trial(kind, kind.command(out, v), out, env, ref, kills, rng, timeout,
                                               root / f"trial-{i}-{attempt}", at_end)
            if landed or failed:
                break
            redraws += 1
            shutil.rmtree(out, ignore_errors=True)
        kills_landed += len(landed)
        if landed or failed:
            why = failed or kind.compare(ref_out, out)
        else:
            why = f"no kill landed in {REDRAWS} draws (every run finished first)"
        ok = why is None
        survived += ok
        what = f" [{kind.label(v)}]" if kind.label(v) else ""
        notes.append(f"  trial {i}{what}: {'survived' if ok else 'NOT survived'}; killed at "
                     f"{'; '.join(landed) or '-'}; {reruns} rerun(s)" + ("" if ok else f"; {why}"))
        if ok:
            shutil.rmtree(out, ignore_errors=True)
    if redraws:
        notes.append(f"  ({redraws} draw(s) repeated: the run finished before the drawn moment)")
    return survived, trials, kills_landed, notes


def run_trial(kind: Kind, cmd: list[str], out: Path, env: dict[str, str], ref: Run, kills: int,
              rng: random.Random, timeout: float, logs: Path, at_end: bool = False) -> tuple[list[str], str | None, int]:
    """Kill ``cmd`` ``kills`` times at moments drawn from ``ref`` (``at_end``: once, as soon as all its work is
    saved and its final files are not), then let it finish -> (where the kills landed, why a run failed or
    None, reruns)."""
    landed, reruns, done = [], 0, -1.0
    for k in range(kills + 1):
        if at_end and k == 0:
            run = start_run(cmd, env, Path(f"{logs}-run-{k}.log"), lambda: float(kind.at_end(out)), (1.0, 0.0),
                            timeout, poll=0.001)
        else:
            kill_at = draw_kill(rng, ref, done) if k < kills and not at_end else None
            run = start_run(cmd, env, Path(f"{logs}-run-{k}.log"), lambda: kind.progress(out), kill_at, timeout)
        reruns += k > 0
        if run.killed:
            at = kind.progress(out)
            when = "the end of the work (saved, final files not)" if at_end and k == 0 else \
                f"{describe(kind.name, kill_at[0])} +{kill_at[1]:.2f} s"
            landed.append(f"{when} (on disk: {describe(kind.name, at)})")
            done = max(at, 0.0)
            continue
        if run.rc != 0:
            return landed, f"run {k} exited {run.rc}: {run.tail()}", reruns
        break  # finished, before the next planned kill or as the final rerun
    return landed, None, reruns


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    load = Path("/proc/loadavg").read_text().split()[:3]
    return f"{os.cpu_count()} CPUs ({model}), load average {' '.join(load)}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=5, help="trials per kind (default 5)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    ap.add_argument("--kills", type=int, default=1, help="SIGKILLs per trial before the run is let finish (default 1)")
    ap.add_argument("--at-end", action="store_true", help="instead of a random moment, kill each trial's first run "
                    "as soon as all its work is saved and its final files are not (train, torchrun: the last step's "
                    "checkpoint is published, summary.json is not; sweep: so for one member, result.json; cache: every "
                    "shard written, the cache not complete); polled every 1 ms, so a window shorter than that is missed")
    ap.add_argument("--workdir", default="", help="folder for all runs (default: a new temporary folder, removed after)")
    ap.add_argument("--home", default="", help="SAESCALE_HOME (default: inside the work folder)")
    ap.add_argument("--cache-corpus", default="sample", help="--corpus of the cache kind: 'sample' (default: every "
                    f"{CORPUS_EVERY}th document of the embedded corpus, written to the work folder), 'default', or files")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before one run counts as hung")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - set(KINDS):
        ap.error(f"--kinds: choose from {', '.join(KINDS)}")
    if args.trials < 1 or args.kills < 1:
        ap.error("--trials and --kills must be at least 1")

    work = Path(args.workdir or tempfile.mkdtemp(prefix="kill-trials-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    home = Path(args.home).resolve() if args.home else work / "home"
    env = {**os.environ, "SAESCALE_HOME": str(home), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env_cache = {**env}
    env_cache.pop("OMP_NUM_THREADS")  # the cache command has no --threads: torch's default, as a user runs it
    how = "at the end of the work (--at-end)" if args.at_end else f"{args.kills} kill(s) each at random moments"
    print(f"kill trials: {args.trials} per kind, {how}, seed {args.seed}; work folder {work}")
    print(f"machine: {machine()}")
    t_all = time.perf_counter()
    if "cache" in kinds:  # convert the default model once, outside every timed run
        convert = "from saescale.activations.lm import resolve_model_folder as r; r('default')"
        subprocess.run([sys.executable, "-c", convert], cwd=REPO, env=env_cache, check=True, capture_output=True)
    all_kinds = make_kinds(work, args.cache_corpus)
    results: dict[str, tuple[int, int]] = {}
    for name in kinds:
        t0 = time.perf_counter()
        rng = random.Random(f"{args.seed}-{name}")
        s, t, n_kills, notes = run_kind(all_kinds[name], work, env_cache if name == "cache" else env, args.trials,
                                        args.kills, rng, args.timeout, args.at_end)
        results[name] = (s, t)
        for line in notes:
            print(line)
        print(f"{name}: {s} of {t} survived ({n_kills} SIGKILLs landed; {time.perf_counter() - t0:.0f} s)", flush=True)
    S, T = sum(s for s, _ in results.values()), sum(t for _, t in results.values())
    print(f"total {time.perf_counter() - t_all:.0f} s; load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(f"kill trials: {S} of {T} survived (" + ", ".join(f"{k} {s}/{t}" for k, (s, t) in results.items()) + ")")
    if S < T or args.keep or args.workdir:
        print(f"logs kept in {work}" + (" (and the folders of the trials that did not survive)" if S < T else ""))
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if S == T else 1


if __name__ == "__main__":
    sys.exit(main())
