"""The human monitor (HMP) commands of migration, as ``human-monitor-command``
runs them, printing what QEMU 7.2 prints.

``virsh qemu-monitor-command --hmp 'info migrate'`` is how people look at a
migration by hand.  :class:`HumanMonitor` reads one command line, turns it
into the QMP command QEMU's HMP handler calls (``migrate_set_parameter
max-bandwidth 100M`` is ``migrate-set-parameters {"max-bandwidth":
104857600}``), runs it on the VM and formats the answer.  What is printed,
and how each parameter's value is read, is the profile's ``MonitorSpec``
(``spec/profiles/monitor_7_2.py``); this module only applies it.  Lines
end in CR LF, as QEMU's monitor writes them.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional

from livemig.errors import MigrationError

__all__ = ["HumanMonitor", "HmpUsage"]

UINT_LIMITS = {"uint8": (0xFF, "uint8_t"), "uint32": (0xFFFFFFFF, "uint32_t")}
_SIZE_UNITS = {"B": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)([a-zA-Z]?)$")
_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")


class HmpUsage(Exception):
    """A command line HMP's argument parser refuses (printed without ``Error:``)."""


class _Refused(Exception):
    """What QEMU prints with the ``Error: `` prefix."""


def parse_size(text: str, default_shift: int = 0) -> Optional[int]:
    """qemu_strtosz: ``1K``, ``1.5M``, bare numbers in ``1 << default_shift``
    units; a fraction needs a unit; None when not a size below 2**64."""
    if text.lower().startswith("0x"):
        try:
            value = int(text, 16) << default_shift
        except ValueError:
            return None
        return value if value < 1 << 64 else None
    m = _SIZE_RE.match(text)
    if not m:
        return None
    number, unit = m.groups()
    if unit:
        shift = _SIZE_UNITS.get(unit.upper())
        if shift is None:
            return None
    else:
        shift = default_shift
        if "." in number and not shift:
            return None  # a fraction of a byte
    value = int(float(number) * (1 << shift)) if "." in number else int(number) << shift
    return value if value < 1 << 64 else None


def parse_c_uint(text: str) -> Optional[int]:
    """strtoull(text, base 0) with nothing after the number: a minus sign
    wraps, as C's does; None when it is not a number."""
    s = text.strip()
    neg = s.startswith("-")
    if neg or s.startswith("+"):
        s = s[1:]
    try:
        if s.lower().startswith("0x"):
            value = int(s[2:], 16)
        elif len(s) > 1 and s.startswith("0"):
            value = int(s[1:], 8)
        else:
            value = int(s, 10) if s.isdigit() else None  # type: ignore[assignment]
    except ValueError:
        return None
    if value is None or value >= 1 << 64:
        return None
    return (-value) % (1 << 64) if neg else value


class HumanMonitor:
    """HMP over one VM: ``run(line)`` -> the text QEMU would print."""

    def __init__(self, vm: Any) -> None:
        self.vm = vm
        self.profile = vm.profile
        self.spec = vm.profile.monitor
        self._commands: dict[str, Callable[[list[str]], str]] = {
            "info": self._info,
            "migrate": self._migrate,
            "migrate_cancel": lambda a: self._qmp("migrate_cancel"),
            "migrate_incoming": lambda a: self._qmp("migrate-incoming",
                                                    {"uri": self._str(a, 0, "migrate_incoming")}),
            "migrate_continue": lambda a: self._qmp("migrate-continue",
                                                    {"state": self._str(a, 0, "migrate_continue")}),
            "migrate_start_postcopy": lambda a: self._qmp("migrate-start-postcopy"),
            "migrate_pause": lambda a: self._qmp("migrate-pause"),
            "migrate_recover": lambda a: self._qmp("migrate-recover",
                                                   {"uri": self._str(a, 0, "migrate_recover")}),
            "migrate_set_capability": self._set_capability,
            "migrate_set_parameter": self._set_parameter,
            "stop": lambda a: self._qmp("stop"),
            "cont": lambda a: self._qmp("cont"),
            "c": lambda a: self._qmp("cont"),
        }
        self._infos: dict[str, Callable[[], str]] = {
            "migrate": self._info_migrate,
            "migrate_capabilities": self._info_capabilities,
            "migrate_parameters": self._info_parameters,
            "status": self._info_status,
            "version": self._info_version,
            "name": self._info_name,
        }

    # ------------------------------------------------------------ entry
    def run(self, line: str) -> str:
        """The output of one command line (CR LF line ends)."""
        words = _split(line)
        text = ""
        if words:
            handler = self._commands.get(words[0])
            try:
                if handler is None:
                    text = self.spec.text("unknown_command") % words[0] + "\n"
                else:
                    text = handler(words[1:])
            except HmpUsage as exc:
                text = f"{exc}\n" + self.spec.text("try_help") % words[0] + "\n"
            except _Refused as exc:
                text = self.spec.text("error") % exc + "\n"
            except MigrationError as exc:  # the QMP command's own error
                text = self.spec.text("error") % exc + "\n"
        return text.replace("\n", "\r\n")

    def _qmp(self, name: str, args: Optional[dict] = None) -> str:
        self.vm.execute(name, args or {})
        return ""

    def _str(self, args: list[str], i: int, command: str) -> str:
        if len(args) <= i:
            raise HmpUsage(self.spec.text("string_expected") % command)
        return args[i]

    # ------------------------------------------------------------ commands
    def _migrate(self, args: list[str]) -> str:
        flags = {"-d": "detach", "-b": "blk", "-i": "inc", "-r": "resume"}
        qargs: dict[str, Any] = {}
        rest = []
        for a in args:
            if a in flags and not rest:
                qargs[flags[a]] = True
            else:
                rest.append(a)
        qargs["uri"] = self._str(rest, 0, "migrate")
        detach = qargs.pop("detach", False)
        self.vm.execute("migrate", qargs)
        # a monitor without a terminal cannot wait for the end (QEMU's HMP)
        return "" if detach else self.spec.text("detached") + "\n"

    def _set_capability(self, args: list[str]) -> str:
        name = self._str(args, 0, "migrate_set_capability")
        if len(args) < 2 or args[1] not in ("on", "off"):
            raise HmpUsage(self.spec.text("expected_on_off"))
        if name not in {c.name for c in self.profile.capabilities}:
            raise _Refused(self.spec.text("invalid_value") % name)
        return self._qmp("migrate-set-capabilities",
                         {"capabilities": [{"capability": name, "state": args[1] == "on"}]})

    def _set_parameter(self, args: list[str]) -> str:
        name = self._str(args, 0, "migrate_set_parameter")
        text = self._str(args, 1, "migrate_set_parameter")
        hmp = self.spec.hmp_param(name)
        param = next((p for p in self.profile.parameters if p.name == name), None)
        if hmp is None or param is None or not param.in_set_command:
            raise _Refused(self.spec.text("invalid_value") % name)
        value = self._parameter_value(hmp, param, text)
        return self._qmp("migrate-set-parameters", {name: value})

    def _parameter_value(self, hmp: Any, param: Any, text: str) -> Any:
        texts = self.spec
        if hmp.parse == "qmp_only":
            raise _Refused(texts.text("qmp_only"))
        if hmp.parse in ("size", "size_mib"):
            value = parse_size(text, 20 if hmp.parse == "size_mib" else 0)
            if hmp.parse == "size_mib":
                if value is None or value > (1 << 63) - 1:
                    raise _Refused(texts.text("invalid_size") % text)
            elif value is None:
                raise _Refused(texts.text("size_expected") % param.name)
            return value
        if hmp.parse in UINT_LIMITS:
            value = parse_c_uint(text)
            if value is None:
                raise _Refused(texts.text("uint_expected") % param.name)
            limit, ctype = UINT_LIMITS[hmp.parse]
            if value > limit:
                raise _Refused(texts.text("uint_range") % (param.name, ctype))
            return value
        if hmp.parse == "bool":
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise _Refused(texts.text("bool_expected") % param.name)
        if hmp.parse == "enum":
            if text not in (param.enum or ()):
                raise _Refused(texts.text("enum_value") % (param.name, text))
            return text
        return text

    # ------------------------------------------------------------ info
    def _info(self, args: list[str]) -> str:
        if not args or args[0] not in self._infos:
            shown = " ".join(["info", *args[:1]])
            return self.spec.text("unknown_command") % shown + "\n"
        return self._infos[args[0]]()

    def _info_migrate(self) -> str:
        info = self.vm.execute("query-migrate")
        lines = ["globals:"] + [f"{k}: {v}" for k, v in self.spec.globals]
        for line in self.spec.info_migrate:
            lines.extend(self._info_line(line, info))
        return "\n".join(lines) + "\n"

    def _info_line(self, line: Any, info: dict) -> list[str]:
        group, _, member = line.path.partition(".")
        if line.path == "status":
            if "status" not in info:
                return []
            text = line.fmt.format(info["status"])
            if info["status"] == line.error_status and info.get("error-desc"):
                text += f" ({info['error-desc']})"
            return [text]
        if line.when == "status":
            return [line.fmt.format(info.get(line.path, 0))] if "status" in info else []
        if line.path == "socket-address":
            if "socket-address" not in info:
                return []
            return ([line.fmt] + [f"\t{_address(a)}" for a in info["socket-address"]] + ["]"])
        if member:
            if group not in info:
                return []
            value = info[group].get(member, 0)
        else:
            if group not in info:
                return []
            value = info[group]
        if line.when == "nonzero" and not value:
            return []
        if isinstance(value, list):
            shown = ",".join(str(v) for v in value)
        elif line.float_digits is not None:
            shown = f"{float(value):.{line.float_digits}f}"
        else:
            shown = str(int(value) >> line.shift)
        return [line.fmt.format(shown)]

    def _info_capabilities(self) -> str:
        caps = self.vm.execute("query-migrate-capabilities")
        return "".join(f"{c['capability']}: {'on' if c['state'] else 'off'}\n" for c in caps)

    def _info_parameters(self) -> str:
        params = self.vm.execute("query-migrate-parameters")
        out = []
        for hmp in self.spec.hmp_params:
            if hmp.show is None or hmp.name not in params:
                continue
            value = params[hmp.name]
            if isinstance(value, bool):
                value = "on" if value else "off"
            out.append(f"{hmp.name}: " + hmp.show.format(value) + "\n")
        return "".join(out)

    def _info_status(self) -> str:
        st = self.vm.execute("query-status")
        text = "VM status: " + ("running" if st["running"] else "paused")
        if not st["running"] and st["status"] != "paused":
            text += f" ({st['status']})"
        return text + "\n"

    def _info_version(self) -> str:
        v = self.vm.execute("query-version")
        q = v["qemu"]
        return f"{q['major']}.{q['minor']}.{q['micro']}{v['package']}\n"

    def _info_name(self) -> str:
        name = self.vm.execute("query-name").get("name")
        return f"{name}\n" if name is not None else ""


def _address(addr: dict) -> str:
    kind = addr.get("type")
    if kind == "inet":
        return f"tcp:{addr['host']}:{addr['port']}"
    if kind == "unix":
        return f"unix:{addr['path']}"
    if kind == "fd":
        return f"fd:{addr['str']}"
    if kind == "vsock":
        return f"tcp:{addr['cid']}:{addr['port']}"
    return "unknown address type"


def _split(line: str) -> list[str]:
    """HMP's words: blank-separated; a double-quoted word may hold blanks and
    backslash escapes (single quotes are ordinary characters, as in QEMU)."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            break
        if line[i] == '"':
            i += 1
            word = []
            while i < n and line[i] != '"':
                if line[i] == "\\" and i + 1 < n:
                    i += 1
                word.append(line[i])
                i += 1
            i += 1
            words.append("".join(word))
        else:
            start = i
            while i < n and not line[i].isspace():
                i += 1
            words.append(line[start:i])
    return words
