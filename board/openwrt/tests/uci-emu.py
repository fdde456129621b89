#!/usr/bin/env python3
"""A small stand-in for OpenWrt's `uci` command line (Debian has no uci),
enough for the package's scripts under test: get, show, set, add, delete,
commit, with -q, on the files of $UCI_CONFDIR (default /etc/config).

Like the real uci, changes are staged in a save directory ($UCI_SAVEDIR)
and reach the file only on `commit CONFIG`, so a script that forgets to
commit changes nothing. Anonymous sections read as @type[N] (negative N from
the end) and show as @type[N], as `uci show` prints them. Every call is
appended to $UCI_LOG when set. Values are written back with single quotes,
as uci export does."""

import json
import os
import re
import shlex
import sys

CONFDIR = os.environ.get("UCI_CONFDIR", "/etc/config")
SAVEDIR = os.environ.get("UCI_SAVEDIR", "/tmp/.uci")


def parse(text):
    """[{'type', 'name' or None, 'opts': {name: str or [str]}}] of a UCI file."""
    sections = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] == "config":
            sections.append({"type": words[1], "name": words[2] if len(words) > 2 else None, "opts": {}})
        elif words[0] == "option" and sections:
            sections[-1]["opts"][words[1]] = words[2] if len(words) > 2 else ""
        elif words[0] == "list" and sections:
            sections[-1]["opts"].setdefault(words[1], []).append(words[2] if len(words) > 2 else "")
        elif words[0] != "package":
            raise SystemExit(f"uci: Parse error ({line!r})")
    return sections


def q(v):
    return "'" + v.replace("'", "'\\''") + "'"


def export(sections):
    out = []
    for s in sections:
        out.append(f"config {s['type']}" + (f" {q(s['name'])}" if s["name"] else ""))
        for k, v in s["opts"].items():
            for x in (v if isinstance(v, list) else [v]):
                out.append(f"\t{'list' if isinstance(v, list) else 'option'} {k} {q(x)}")
        out.append("")
    return "\n".join(out)


def load(config):
    """The config with its staged changes applied, or None when it does not exist."""
    path = os.path.join(CONFDIR, config)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        sections = parse(f.read())
    staged = os.path.join(SAVEDIR, config + ".json")
    if os.path.exists(staged):
        with open(staged) as f:
            sections = json.load(f)
    return sections


def stage(config, sections):
    os.makedirs(SAVEDIR, exist_ok=True)
    with open(os.path.join(SAVEDIR, config + ".json"), "w") as f:
        json.dump(sections, f)


def ident(sections, s):
    if s["name"]:
        return s["name"]
    same = [x for x in sections if x["type"] == s["type"]]
    return f"@{s['type']}[{same.index(s)}]"


def find(sections, ref):
    m = re.fullmatch(r"@([A-Za-z0-9_]+)\[(-?\d+)\]", ref)
    if m:
        same = [x for x in sections if x["type"] == m.group(1)]
        i = int(m.group(2))
        return same[i] if -len(same) <= i < len(same) else None
    return next((x for x in sections if x["name"] == ref), None)


def split(path):
    """config.section.option=value -> (config, section, option, value)."""
    key, eq, value = path.partition("=")
    parts = key.split(".", 2)
    return parts + [None] * (3 - len(parts)) + [value if eq else None]


def fail(quiet, msg="Entry not found"):
    if not quiet:
        print(f"uci: {msg}", file=sys.stderr)
    return 1


def main(argv):
    quiet = False
    while argv and argv[0].startswith("-"):
        if argv[0] == "-q":
            quiet = True
        else:
            return fail(quiet, f"unsupported flag {argv[0]}")
        argv = argv[1:]
    if not argv:
        return fail(quiet, "no command")
    cmd, args = argv[0], argv[1:]
    if os.environ.get("UCI_LOG"):
        with open(os.environ["UCI_LOG"], "a") as f:
            f.write(" ".join(["uci", cmd] + args) + "\n")

    if cmd == "commit":
        configs = args or sorted(p[:-5] for p in os.listdir(SAVEDIR) if p.endswith(".json")) \
            if os.path.isdir(SAVEDIR) else args
        for config in configs:
            staged = os.path.join(SAVEDIR, config + ".json")
            if os.path.exists(staged):
                sections = load(config)
                with open(os.path.join(CONFDIR, config), "w") as f:
                    f.write(export(sections))
                os.remove(staged)
        return 0

    if not args:
        if cmd == "show":
            return fail(quiet, "show without a config is not emulated")
        return fail(quiet, "Invalid argument")
    config, sref, opt, value = split(args[0])
    sections = load(config)
    if sections is None:
        return fail(quiet)

    if cmd == "show":
        wanted = [find(sections, sref)] if sref else sections
        if wanted == [None]:
            return fail(quiet)
        for s in wanted:
            sid = ident(sections, s)
            if not opt:
                print(f"{config}.{sid}={s['type']}")
            for k, v in s["opts"].items():
                if opt and k != opt:
                    continue
                print(f"{config}.{sid}.{k}=" + " ".join(q(x) for x in (v if isinstance(v, list) else [v])))
        return 0
    if cmd == "get":
        s = find(sections, sref) if sref else None
        if s is None:
            return fail(quiet)
        if opt is None:
            print(s["type"])
            return 0
        if opt not in s["opts"]:
            return fail(quiet)
        v = s["opts"][opt]
        print(" ".join(v) if isinstance(v, list) else v)
        return 0
    if cmd == "set":
        if value is None or not sref:
            return fail(quiet, "Invalid argument")
        s = find(sections, sref)
        if opt is None:
            if s is None:
                if sref.startswith("@"):
                    return fail(quiet)
                sections.append({"type": value, "name": sref, "opts": {}})
            else:
                s["type"] = value
        elif s is None:
            return fail(quiet)
        else:
            s["opts"][opt] = value
        stage(config, sections)
        return 0
    if cmd == "add":
        if len(args) != 2:
            return fail(quiet, "Invalid argument")
        sections.append({"type": args[1], "name": None, "opts": {}})
        stage(config, sections)
        print(f"cfg{len(sections):02x}")
        return 0
    if cmd == "delete":
        s = find(sections, sref)
        if s is None:
            return fail(quiet)
        if opt is None:
            sections.remove(s)
        elif s["opts"].pop(opt, None) is None:
            return fail(quiet)
        stage(config, sections)
        return 0
    return fail(quiet, f"command {cmd} is not emulated")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
