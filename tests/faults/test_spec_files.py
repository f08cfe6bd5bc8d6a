"""Hostile and broken spec files: every one is bad input (exit 2) with a message, never a traceback.

A generator writes several hundred malformed specs (encodings, binary formats, control
characters, structure, size, YAML bombs, odd keys, tags, special paths) and a mutation of every
value of the example spec; each goes through `llmship validate` in-process, and a sample through
every command that takes a spec in real subprocesses.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
import os
import pickle
import random
import re
import subprocess
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.faults.conftest import REPO, llmship_cmd, subprocess_env

pytestmark = pytest.mark.faults

BASE = (REPO / "examples" / "tiny-local.yaml").read_text()
UNREADABLE = "unreadable"  # the message must be `[spec] PATH: ...`
INVALID = "invalid"  # readable YAML that is not a valid spec: exit 2 with field errors
BAD = "bad"  # exit 2 with either kind of message (e.g. random bytes that happen to be a YAML scalar)
EITHER = "either"  # a value mutation that may still be a valid spec: exit 0 or 2, never a crash


@dataclass
class Case:
    id: str
    path: Path
    expect: str


def _lines_with_values(text: str) -> list[int]:
    return [i for i, line in enumerate(text.splitlines()) if re.match(r"^\s*[a-z_0-9]+:\s+[^#\s]", line)]


def generate(tmp: Path) -> list[Case]:
    """Write every malformed spec under tmp; hundreds of cases in well under a second."""
    cases: list[Case] = []
    rnd = random.Random(13)

    def add(name: str, data: bytes | str, expect: str = UNREADABLE) -> None:
        path = tmp / f"{len(cases):04d}-{name}.yaml"
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        cases.append(Case(name, path, expect))

    # -- encodings other than UTF-8 -------------------------------------------------------
    for enc in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"):
        add(f"enc-{enc}", BASE.encode(enc))
    add("enc-utf16-bom-small", codecs.BOM_UTF16_LE + "name: x\n".encode("utf-16-le"))
    add("enc-latin1-comment", (BASE + "# café, naïve, Ærø\n").encode("latin-1"))
    add("enc-latin1-value", BASE.replace("tiny-llama\n", "tïny\n", 1).encode("latin-1"))
    add("enc-cp1252-quotes", (BASE + "# \u201cquoted\u201d \u2013 dash\n").encode("cp1252"))
    add("enc-utf8-bom-then-latin1", codecs.BOM_UTF8 + "# é\n".encode("latin-1") + BASE.encode())
    add("enc-truncated-multibyte-at-eof", BASE.encode() + "é".encode()[:1])
    raw = BASE.encode()
    bad_sequences = {"ff": b"\xff", "c3": b"\xc3", "surrogate": b"\xed\xa0\x80", "overlong": b"\xc0\xaf",
                     "5byte": b"\xf8\x88\x80\x80\x80"}
    for label, seq in bad_sequences.items():
        for k in range(20):
            off = k * len(raw) // 20
            add(f"enc-bad-{label}-at-{off}", raw[:off] + seq + raw[off:])

    # -- binary formats -------------------------------------------------------------------
    add("bin-gzip", gzip.compress(raw))
    add("bin-bzip2", bz2.compress(raw))
    add("bin-xz", lzma.compress(raw))
    add("bin-zlib", zlib.compress(raw))
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("spec.yaml", BASE)
    add("bin-zip", zbuf.getvalue())
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(rnd.randrange(256) for _ in range(200))
    add("bin-png", png)
    add("bin-jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(rnd.randrange(256) for _ in range(200)))
    add("bin-elf", b"\x7fELF\x02\x01\x01" + bytes(64))
    add("bin-pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    add("bin-pickle", pickle.dumps({"name": "x", "model": {"source": "file:///x"}}))
    add("bin-sqlite", b"SQLite format 3\x00" + bytes(100))
    add("bin-all-bytes", bytes(range(256)))
    add("bin-nul-in-middle", raw[:100] + b"\x00" + raw[100:])
    add("bin-nul-only", b"\x00" * 64)
    for size in (1, 7, 100, 4096, 65536):
        for seed in range(4):
            r = random.Random(size * 31 + seed)
            add(f"bin-random-{size}-{seed}", bytes(r.randrange(256) for _ in range(size)), BAD)

    # -- control characters -----------------------------------------------------------------
    for c in [*range(0x01, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]:
        add(f"ctl-{c:02x}", BASE.replace("name: tiny-llama", f"name: tiny{chr(c)}llama", 1))
    add("ctl-ansi-escape", BASE.replace("name: tiny-llama", "name: \x1b[31mred\x1b[0m", 1))
    add("ctl-u-fffe", BASE + "# \ufffe\n")
    add("ctl-u-ffff", BASE.replace("tiny-llama\n", "tiny\uffffllama\n", 1))

    # -- structure ----------------------------------------------------------------------------
    for name, text in {"empty": "", "whitespace": "  \n\n\t\n", "comment-only": "# nothing here\n",
                       "doc-start-only": "---\n", "doc-end-only": "...\n", "doc-start-end": "---\n...\n",
                       "null-doc": "~\n", "two-docs": BASE + "---\n" + BASE, "tab-indent": "name: x\nmodel:\n\tsource: y\n",
                       "unclosed-flow": "name: [x", "unclosed-quote": 'name: "x', "bad-indent": "name: x\n  model: y\n",
                       "undefined-alias": "name: *nope\n", "directive-only": "%YAML 1.1\n", "bad-directive": "%YAML 9.9\n---\nname: x\n",
                       }.items():
        add(f"struct-{name}", text)
    for name, text in {"scalar": "hello\n", "int": "42\n", "float": "3.14\n", "bool": "true\n", "list": "- a\n- b\n",
                       "empty-list": "[]\n"}.items():
        add(f"shape-{name}", text)
    add("shape-empty-map", "{}\n", INVALID)

    # -- depth and width ------------------------------------------------------------------------
    for n in (100, 1000, 10_000, 100_000):
        add(f"deep-flow-seq-{n}", "[" * n + "]" * n)
        add(f"deep-flow-map-{n}", "{a: " * n + "1" + "}" * n)
    for n in (100, 400):
        add(f"deep-block-map-{n}", "".join(f"{'  ' * i}k{i}:\n" for i in range(n)) + "  " * n + "x\n")
        add(f"deep-block-seq-{n}", "".join(f"{'  ' * i}-\n" for i in range(n)) + "  " * n + "x\n")
    add("deep-in-field", BASE.replace("    dtype: bfloat16", "    extra_args: " + "[" * 2000 + "]" * 2000, 1))
    add("wide-list", "name: x\nsteps: [" + ",".join("1" for _ in range(100_000)) + "]\n")
    add("wide-map", "name: x\n" + "".join(f"k{i}: {i}\n" for i in range(30_000)))

    # -- size -------------------------------------------------------------------------------------
    add("huge-comments-2MiB", BASE + ("# " + "x" * 1000 + "\n") * 2048)
    add("huge-line", "name: " + "x" * 3_000_000 + "\n")
    sparse = tmp / f"{len(cases):04d}-huge-sparse-64MiB.yaml"
    with sparse.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    cases.append(Case("huge-sparse-64MiB", sparse, UNREADABLE))

    # -- YAML bombs -----------------------------------------------------------------------------
    laughs = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        laughs.append(f"{cur}: &{cur} [{','.join('*' + prev for _ in range(9))}]")
    bomb = "\n".join(laughs) + "\n"
    add("bomb-laughs-top", bomb)
    add("bomb-laughs-in-extra-args", BASE.replace("    dtype: bfloat16", "    extra_args: *i", 1).replace("name:", bomb + "name:", 1))
    add("bomb-laughs-in-waive", bomb + BASE + "checks:\n  waive: {x: *i}\n")
    add("bomb-laughs-as-model", bomb + BASE.replace("model:\n  source: file:///tmp/llmship/tiny-llama", "model: *i", 1))
    merges = ["m0: &m0 {k0: 1, k1: 1, k2: 1, k3: 1, k4: 1, k5: 1, k6: 1, k7: 1, k8: 1, k9: 1}"]
    for i in range(1, 10):
        merges.append(f"m{i}: &m{i} {{<<: [{', '.join(f'*m{i - 1}' for _ in range(10))}], z{i}: 1}}")
    add("bomb-merge-keys", "\n".join(merges) + "\n", BAD)
    add("bomb-recursive-seq", "name: &a [*a]\n")
    add("bomb-recursive-map", "name: x\nmodel: &m {source: file:///x, self: *m}\n")
    add("bomb-recursive-deep", "a: &a [[[[*a]]]]\nname: x\n")

    # -- keys that are not strings, and duplicate keys --------------------------------------------
    plain_keys = {"int": "1", "bool": "true", "yes": "yes", "null": "null", "tilde": "~", "float": "3.5",
                  "date": "2024-01-01", "inf": ".inf", "hex": "0x1F", "binary": "!!binary aGk="}
    complex_keys = {"list": "[a, b]", "map": "{a: 1}", "set": "!!set {a}"}
    for name, key in plain_keys.items():
        add(f"key-{name}-top", f"{key}: x\n" + BASE)
        add(f"key-{name}-nested", BASE.replace("model:\n", f"model:\n  {key}: x\n", 1))
    for name, key in complex_keys.items():
        add(f"key-{name}-top", f"? {key}\n: x\n" + BASE)
        add(f"key-{name}-nested", BASE.replace("model:\n", f"model:\n  ? {key}\n  : x\n", 1))
    add("dup-top-name", BASE.replace("name: tiny-llama\n", "name: tiny-llama\nname: other\n", 1))
    add("dup-nested", BASE.replace("    max_num_seqs: 16\n", "    max_num_seqs: 16\n    max_num_seqs: 2\n", 1))
    add("dup-section", BASE + "slo:\n  ttft_p99_ms: 1\n")
    add("dup-flow", "name: x\nmodel: {source: file:///a, source: file:///b}\n")
    add("dup-quoted-vs-plain", BASE.replace("name: tiny-llama\n", 'name: tiny-llama\n"name": other\n', 1))

    # -- tags -------------------------------------------------------------------------------------
    for name, value in {"py-object": "!!python/object:os.system {}", "py-apply": '!!python/object/apply:os.system ["true"]',
                        "py-name": "!!python/name:os.system", "py-module": "!!python/module:os",
                        "py-tuple": "!!python/tuple [1, 2]", "py-bytes": "!!python/bytes aGk=",
                        "py-new": "!!python/object/new:dict {}", "local-tag": "!foo bar",
                        "verbatim-tag": "!<tag:example.com,2000:x> y", "int-garbage": '!!int "x"',
                        "int-empty-binary": "!!int 0b", "float-garbage": '!!float "abc"', "bool-garbage": '!!bool "maybe"',
                        "timestamp-garbage": '!!timestamp "garbage"', "timestamp-bad-date": "!!timestamp 2001-13-45",
                        "binary-garbage": '!!binary "!!!"', "map-tag-on-scalar": "!!map x", "seq-tag-on-scalar": "!!seq x",
                        "str-tag-on-map": "!!str {a: 1}", "null-tag-on-scalar": "!!null x"}.items():
        # a tag PyYAML reads into a plain value of the wrong type ends in a field error instead
        add(f"tag-{name}", BASE.replace("name: tiny-llama", f"name: {value}", 1),
            BAD if name in ("binary-garbage", "null-tag-on-scalar") else UNREADABLE)
    for name, value in {"binary": "!!binary aGk=", "set": "!!set {a, b}", "omap": "!!omap [a: 1]",
                        "pairs": "!!pairs [a: 1]"}.items():
        add(f"typed-{name}", BASE.replace("name: tiny-llama", f"name: {value}", 1))
    add("typed-timestamp", BASE.replace("name: tiny-llama", "name: 2001-12-14t21:59:43.10-05:00", 1), INVALID)

    # -- every value of the example replaced by junk of another type --------------------------------
    junk = ["null", "[]", "{}", "-1", "1e308", "x" * 300, "true", ".nan", "!!binary aGk=", "0o777", "'\u202e'",
            "&x 1"]
    lines = BASE.splitlines()
    for i in _lines_with_values(BASE):
        key = lines[i].split(":", 1)[0]
        for j, value in enumerate(junk):
            changed = list(lines)
            changed[i] = f"{key}: {value}"
            add(f"value-{i}-{key.strip()}-{j}", "\n".join(changed) + "\n", EITHER)
    return cases


def special_paths(tmp: Path) -> list[Case]:
    """Paths that are not regular files, or not paths at all."""
    d = tmp / "special"
    d.mkdir()
    out = [Case("directory", d, UNREADABLE), Case("directory-slash", Path(str(d) + "/"), UNREADABLE),
           Case("dot", Path("."), UNREADABLE), Case("dev-null", Path("/dev/null"), UNREADABLE),
           Case("dev-zero", Path("/dev/zero"), UNREADABLE), Case("proc-cmdline", Path("/proc/self/cmdline"), UNREADABLE),
           Case("missing", d / "nope.yaml", UNREADABLE)]
    fifo = d / "fifo.yaml"
    os.mkfifo(fifo)
    out.append(Case("fifo", fifo, UNREADABLE))
    (d / "to-zero.yaml").symlink_to("/dev/zero")
    out.append(Case("symlink-to-dev-zero", d / "to-zero.yaml", UNREADABLE))
    (d / "loop-a.yaml").symlink_to(d / "loop-b.yaml")
    (d / "loop-b.yaml").symlink_to(d / "loop-a.yaml")
    out.append(Case("symlink-loop", d / "loop-a.yaml", UNREADABLE))
    (d / "dangling.yaml").symlink_to(d / "gone.yaml")
    out.append(Case("symlink-dangling", d / "dangling.yaml", UNREADABLE))
    out.append(Case("name-too-long", d / ("x" * 300 + ".yaml"), UNREADABLE))
    out.append(Case("not-a-dir-parent", tmp / "0000-enc-utf-16.yaml" / "spec.yaml", UNREADABLE))
    if os.geteuid() != 0:
        locked = d / "locked.yaml"
        locked.write_text(BASE)
        locked.chmod(0)
        out.append(Case("no-permission", locked, UNREADABLE))
    return out


@pytest.fixture(scope="module")
def all_cases(tmp_path_factory) -> list[Case]:
    tmp = tmp_path_factory.mktemp("malformed")
    return generate(tmp) + special_paths(tmp)


def _check(case: Case, code: int, output: str) -> str | None:
    """What is wrong with how llmship answered a case; None when it answered right."""
    if "Traceback" in output or "internal error" in output:
        return f"crashed (exit {code}): {output[-600:]}"
    if case.expect == EITHER:
        return None if code in (0, 2) else f"exit {code}: {output[-300:]}"
    if code != 2:
        return f"exit {code}, wanted 2: {output[-300:]}"
    if case.expect == UNREADABLE and f"[spec] {case.path}:" not in output:
        return f"no '[spec] {case.path}:' line in: {output[-300:]}"
    return None


def test_generator_makes_hundreds_of_cases(all_cases):
    assert len(all_cases) >= 500
    assert len({c.id for c in all_cases}) == len(all_cases)


def test_every_malformed_spec_is_bad_input_in_process(all_cases):
    from flows.cli import app

    runner = CliRunner()
    wrong, slow = [], []
    t_all = time.monotonic()
    for case in all_cases:
        t0 = time.monotonic()
        res = runner.invoke(app, ["validate", str(case.path)])
        took = time.monotonic() - t0
        if took > 3:
            slow.append(f"{case.id}: {took:.1f}s")
        output = res.output + (f"\nTraceback: {res.exception!r}" if res.exception and not isinstance(res.exception, SystemExit) else "")
        problem = _check(case, res.exit_code, output)
        if problem:
            wrong.append(f"{case.id}: {problem}"[:240].replace("\n", " | "))
    total = time.monotonic() - t_all
    kinds = sorted({w.split("-", 1)[0] for w in wrong})
    assert not wrong, (f"{len(wrong)} of {len(all_cases)} cases answered wrong (kinds: {', '.join(kinds)}):\n"
                       + "\n".join(wrong[:80]))
    assert not slow, "cases over 3 s: " + ", ".join(slow)
    assert total < 120, f"{len(all_cases)} cases took {total:.0f} s"


def test_valid_yaml_features_still_work(tmp_path):
    """Anchors, aliases and a merge key that overrides what it merges stay allowed."""
    from tasks.spec import load_spec

    text = BASE.replace("warmup:\n  batch_size: 4", "warmup: &w\n  batch_size: 4", 1)
    path = tmp_path / "anchors.yaml"
    path.write_text(text)
    assert load_spec(path).warmup.batch_size == 4
    merged = tmp_path / "merged.yaml"
    merged.write_text(BASE.replace("load:\n  mode: concurrency", "load:\n  <<: {mode: rate, concurrency: 2}\n  mode: concurrency", 1))
    spec = load_spec(merged)
    assert spec.load.mode == "concurrency" and spec.load.concurrency == 4
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(codecs.BOM_UTF8 + BASE.encode())
    assert load_spec(bom).name == "tiny-llama"


SUBPROCESS_SAMPLE = ["enc-utf-16", "enc-latin1-comment", "bin-gzip", "bin-png", "deep-flow-seq-100000",
                     "bomb-laughs-top", "dup-top-name", "tag-py-apply", "key-int-top", "directory"]
COMMANDS = ["validate", "promote", "render", "plan", "quantize", "build-engine", "status"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_that_takes_a_spec_refuses_it(all_cases, command, tmp_path):
    """Real subprocesses, as a user runs them: two sample cases per command, all ten across them."""
    by_id = {c.id: c for c in all_cases}
    k = COMMANDS.index(command)
    for case_id in (SUBPROCESS_SAMPLE[k % 10], SUBPROCESS_SAMPLE[(k + 7) % 10]):
        case = by_id[case_id]
        args = {"validate": [str(case.path)], "promote": [str(case.path)], "render": [str(case.path), "--out", str(tmp_path / "o")],
                "plan": [str(case.path)], "quantize": [str(case.path), str(tmp_path / "q")],
                "build-engine": [str(case.path), str(tmp_path / "w")], "status": ["--spec", str(case.path)]}[command]
        proc = subprocess.run(llmship_cmd(command, *args), cwd=REPO, env=subprocess_env(), capture_output=True,
                              text=True, timeout=120)
        problem = _check(case, proc.returncode, proc.stdout + proc.stderr)
        assert problem is None, f"llmship {command} {case_id}: {problem}"
        assert not (tmp_path / "o").exists() and not (tmp_path / "q").exists() and not (tmp_path / "w").exists()
