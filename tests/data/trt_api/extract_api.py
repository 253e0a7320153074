#!/usr/bin/env python3
"""Static API-surface extractor for the TensorRT and cuda-python binding wheels.

Downloads (pip download --no-deps) the wheels, unpacks them and extracts class /
method / parameter / property / enum / function names WITHOUT importing the
compiled extension modules (there is no libnvinfer / CUDA on this machine).

TensorRT (pybind11):  pybind11 does not store whole signatures in the binary
  (they are assembled at import time from per-type descriptors), so the
  extractor disassembles the module (binutils `objdump -d -C`), follows
  RIP-relative `lea` loads of .rodata C strings through registers and stack
  slots, and attributes them to the pybind11 registration calls they feed:
    class_<T>::class_ / generic_type::initialize  -> class name (C++ T -> Python name)
    class_<T>::def / add_class_method              -> method name (+ py::arg names)
    def_property* / def_readwrite / def_readonly   -> property name
    enum_<T>::enum_ / enum_base::init              -> enum name
    enum_<T>::value / enum_base::value             -> enum member
    module_::def / module_::add_object             -> module-level function
  Parameter names are the identifier-like strings loaded between two
  registration events; if the docstring of the same registration has
  ":arg x:" lines with the same set of names, their order is used.
cuda-python (Cython, built with embedsignature): every def's docstring starts
  with "name(arg, type arg, ...)" and contains numpy-style "Returns" sections;
  these are read from the .so (and .pyx when shipped).  Enum members come from
  the cy*.pxd C declarations ("cdef enum X: ..."), struct fields from
  "cdef struct X:" (the Python wrapper classes expose the same fields).

Usage:  python3 extract_api.py [--outdir data] [--workdir work] [--skip-download]
        python3 extract_api.py --crosscheck   # optional: compare with an import
                                              # of tensorrt.so against stub libs
"""
import argparse
import glob
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))

PIP_FLAGS = ["--no-deps", "--only-binary=:all:", "--python-version", "3.11",
             "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
             "--platform", "manylinux_2_24_x86_64", "--platform", "manylinux_2_27_x86_64",
             "--platform", "manylinux_2_28_x86_64"]

# (output stem, pip requirement, kind)
TARGETS = [
    ("tensorrt-10.3", "tensorrt-cu12-bindings==10.3.*", "trt"),
    ("tensorrt-11.4", "tensorrt-cu13-bindings==11.4.*", "trt"),
    ("cuda-12.6", "cuda-python==12.6.*", "cuda"),   # 12.6 is the monolithic cuda-python wheel
    ("cuda-13.5", "cuda-bindings==13.5.*", "cuda"),  # 12.8+ split: cuda-bindings holds cuda.bindings.*
]

INTERNAL_METHODS = {"_pybind11_conduit_v1_"}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class IDENT:
    """identifier-like C string, excluding pybind11's internal capsule/record names"""
    @staticmethod
    def match(s):
        return bool(_IDENT.match(s)) and not s.startswith("pybind11_")


# --------------------------------------------------------------------------- download
def download(req, wheeldir):
    os.makedirs(wheeldir, exist_ok=True)
    before = set(os.listdir(wheeldir))
    out = subprocess.run([sys.executable, "-m", "pip", "download", *PIP_FLAGS, "-d", wheeldir, req],
                         capture_output=True, text=True)
    m = re.findall(r"(?:Saved|File was already downloaded) (\S+\.whl)", out.stdout)
    if m:
        return os.path.join(wheeldir, os.path.basename(m[-1]))
    new = set(os.listdir(wheeldir)) - before
    if new:
        return os.path.join(wheeldir, sorted(new)[0])
    raise RuntimeError("pip download %s failed:\n%s%s" % (req, out.stdout[-2000:], out.stderr[-2000:]))


def unpack(whl, workdir):
    d = os.path.join(workdir, os.path.basename(whl)[:-4])
    if not os.path.isdir(d):
        zipfile.ZipFile(whl).extractall(d)
    return d


def wheel_version(whl):
    return os.path.basename(whl).split("-")[1]


# --------------------------------------------------------------------------- minimal ELF reader
class Elf:
    def __init__(self, path):
        self.data = open(path, "rb").read()
        d = self.data
        assert d[:4] == b"\x7fELF" and d[4] == 2, "64-bit ELF expected"
        (self.shoff,) = struct.unpack_from("<Q", d, 0x28)
        self.shentsize, self.shnum, self.shstrndx = struct.unpack_from("<HHH", d, 0x3A)
        secs = []
        for i in range(self.shnum):
            o = self.shoff + i * self.shentsize
            name, typ, flags, addr, off, size, link, info, align, entsize = struct.unpack_from("<IIQQQQIIQQ", d, o)
            secs.append(dict(name=name, type=typ, addr=addr, off=off, size=size, link=link, entsize=entsize))
        strtab = secs[self.shstrndx]
        for s in secs:
            s["name"] = self._cstr(strtab["off"] + s["name"])
        self.secs = {s["name"]: s for s in secs}
        self.seclist = secs
        # R_X86_64_RELATIVE relocations: address -> addend (pointer values in .data.rel.ro)
        self.relative = {}
        for s in secs:
            if s["type"] == 4:  # SHT_RELA
                for o in range(s["off"], s["off"] + s["size"], 24):
                    r_off, r_info, r_add = struct.unpack_from("<QQq", d, o)
                    if (r_info & 0xffffffff) == 8:
                        self.relative[r_off] = r_add

    def _cstr(self, off):
        e = self.data.index(b"\0", off)
        return self.data[off:e].decode("utf-8", "replace")

    def sec_of(self, addr):
        for s in self.seclist:
            if s["addr"] and s["addr"] <= addr < s["addr"] + s["size"] and s["type"] != 8:
                return s
        return None

    def cstr_at(self, addr):
        s = self.sec_of(addr)
        if not s or not s["name"].startswith(".rodata"):
            return None
        return self._cstr(s["off"] + addr - s["addr"])

    def ptr_string(self, addr):
        """String pointed to by a pointer variable at addr (e.g. tensorrt::XDoc::y)."""
        if addr in self.relative:
            return self.cstr_at(self.relative[addr])
        s = self.sec_of(addr)
        if s is None:
            return None
        try:
            (p,) = struct.unpack_from("<Q", self.data, s["off"] + addr - s["addr"])
        except struct.error:
            return None
        return self.cstr_at(p)


# --------------------------------------------------------------------------- TensorRT (pybind11) static extraction
INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
FUNC = re.compile(r"^([0-9a-f]+) <(.*)>:$")
LEA_RIP = re.compile(r"^-?0x[0-9a-f]+\(%rip\),%(r\w+)\s+#\s+([0-9a-f]+)(?: <(.*)>)?")
MOV_RR = re.compile(r"^%(r\w+),%(r\w+)$")
MOV_RM = re.compile(r"^%(r\w+),(-?0x[0-9a-f]+)\(%(rbp|rsp)\)$")
MOV_MR = re.compile(r"^(-?0x[0-9a-f]+)\(%(rbp|rsp)\),%(r\w+)$")
CALL = re.compile(r"^([0-9a-f]+) <(.*)>$")
CALLER_SAVED = ("rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11")


def _strip_templates(s):
    out, depth = [], 0
    for ch in s:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def _first_template_arg(s, prefix):
    """'pybind11::class_<nvinfer1::IBuilder, std::unique_ptr<..>>::def<...>' -> 'nvinfer1::IBuilder'"""
    i = s.find(prefix + "<")
    if i < 0:
        return None
    i += len(prefix) + 1
    depth, j = 0, i
    while j < len(s):
        c = s[j]
        if c == "<":
            depth += 1
        elif c == ">":
            if depth == 0:
                break
            depth -= 1
        elif c == "," and depth == 0:
            break
        j += 1
    return s[i:j].strip()


def _cpp_short(t):
    t = re.sub(r"\bv_\d+_\d+::", "", t or "")
    return t.split("::")[-1]


def _doc_args(doc):
    if not doc:
        return []
    return re.findall(r"^\s*:arg (\w+):", doc, re.M)


def _doc_signature(doc, name):
    """Some TRT docstrings carry an explicit signature line, e.g. 'name(a, b) -> c'."""
    return None


def _classify(callee):
    """Map a demangled callee name to an event kind (or None)."""
    c = callee
    plain = _strip_templates(c)
    # drop a demangled return type such as "pybind11::class_& " / "pybind11::module_& "
    plain = re.sub(r"^[\w:]+& ", "", plain)
    if plain.startswith("pybind11::class_::class_"):
        return "class_ctor"
    if plain.startswith("pybind11::enum_::enum_"):
        return "enum_ctor"
    if plain.startswith("pybind11::detail::generic_type::initialize("):
        return "class_init"
    if plain.startswith("pybind11::detail::enum_base::init("):
        return "enum_init"
    if plain.startswith("pybind11::detail::enum_base::value(") or plain.startswith("pybind11::enum_::value("):
        return "enum_value"
    if re.match(r"pybind11::class_::(def_property\w*|def_readwrite|def_readonly\w*)\(", plain):
        return "class_prop"
    if plain.startswith("pybind11::detail::generic_type::def_property_static_impl("):
        return "prop_impl"
    if re.match(r"pybind11::class_::(def|def_static)\(", plain):
        return "class_def"
    if plain.startswith("pybind11::detail::add_class_method("):
        return "add_method"
    if re.match(r"pybind11::module_::def\(", plain):
        return "module_def"
    if plain.startswith("pybind11::module_::add_object("):
        return "module_add"
    if plain.startswith("pybind11::getattr(pybind11::handle, char const*") or plain.startswith("PyObject_GetAttrString"):
        return "getattr"
    if plain.startswith("pybind11::detail::type_record::type_record("):
        return "type_record"
    return None


class RawArgs(tuple):
    """(items, doc) where items = [(name, stack_offset_or_None, seq)]; ordered at the end."""
    def __new__(cls, items, doc):
        return tuple.__new__(cls, (tuple(items), doc))


def _order(raw, direction):
    items, doc = raw
    if items and all(off is not None for _, off, _ in items):
        ordered = [s for s, _, _ in sorted(items, key=lambda t: t[1] * direction)]
    else:
        ordered = [s for s, _, _ in items]
    dargs = _doc_args(doc)
    if dargs and set(dargs) == set(ordered) and len(dargs) == len(ordered):
        return dargs
    return ordered


def _calibrate(raws):
    """GCC lays py::arg temporaries out ascending in some builds and descending in
    others: vote with docstrings whose ':arg x:' list has exactly the same names."""
    votes = {1: 0, -1: 0}
    for items, doc in raws:
        dargs = _doc_args(doc)
        if len(items) < 2 or not dargs or set(dargs) != {s for s, _, _ in items}:
            continue
        if not all(off is not None for _, off, _ in items):
            continue
        for d in (1, -1):
            if [s for s, _, _ in sorted(items, key=lambda t: t[1] * d)] == dargs:
                votes[d] += 1
    return (1 if votes[1] >= votes[-1] else -1), votes


def ORDER_ARGS(items):
    """py::arg temporaries: order by stack-slot address when every name was spilled
    to a frame slot (GCC lays the temporaries out in declaration order), else lea order."""
    if items and all(off is not None for _, off, _ in items):
        return [s for s, _, _ in sorted(items, key=lambda t: t[1])]
    return [s for s, _, _ in items]


def _baked_def_names(dis, elf):
    """constprop clones of class_<T>::def / module_::def carry their method name as a
    constant: find it at the sibling lookup (PyObject_GetAttrString / pybind11::getattr)."""
    baked, cur, regs, ctor, prop, after_tr = {}, None, {}, False, False, False
    first_ident, prologue, ncalls = {}, {}, 0
    for line in dis.splitlines():
        m = FUNC.match(line)
        if m:
            name = m.group(2)
            plain = re.sub(r"^[\w:]+& ", "", _strip_templates(name))
            ctor = bool(re.match(r"pybind11::(class_::class_|enum_::enum_)\(", plain))
            prop = bool(re.match(r"pybind11::class_::(def_property\w*|def_readwrite|def_readonly\w*)\(", plain))
            cur = int(m.group(1), 16) if (ctor or prop or re.match(r"pybind11::(class_::def|module_::def)", plain)) else None
            regs, after_tr, ncalls = {}, False, 0
            continue
        if cur is None or cur in baked:
            continue
        m = INSN.match(line)
        if not m:
            continue
        op, rest = m.group(2), m.group(3)
        if op == "lea":
            lm = LEA_RIP.match(rest)
            if lm:
                s = elf.cstr_at(int(lm.group(2), 16))
                if s and IDENT.match(s):
                    regs[lm.group(1)] = s
                    if ctor and not ncalls:
                        prologue.setdefault(cur, s)
                    if ctor and after_tr:
                        baked[cur] = s
                    elif ctor or prop:
                        first_ident.setdefault(cur, s)
        elif op in ("mov", "movq") and MOV_RR.match(rest):
            mm = MOV_RR.match(rest)
            if mm.group(1) in regs:
                regs[mm.group(2)] = regs[mm.group(1)]
            else:
                regs.pop(mm.group(2), None)
        elif op == "call":
            ncalls += 1
        if op == "call" and prop:
            if "def_property_static_impl" in rest and "rsi" in regs:
                baked[cur] = regs["rsi"]
            regs = {}
            continue
        elif op == "call" and ctor:
            if "type_record::type_record()" in rest:
                after_tr = True
            regs = {}
            continue
        elif op == "call":
            if "PyObject_GetAttrString" in rest and "rsi" in regs:
                baked[cur] = regs["rsi"]
            elif "pybind11::getattr(pybind11::handle, char const*" in rest and "rdx" in regs:
                baked[cur] = regs["rdx"]
            regs = {}
    baked.update(prologue)   # a constprop ctor clone loads its baked name first thing
    for k, v in first_ident.items():
        baked.setdefault(k, v)
    return baked


def extract_pybind11(so_path):
    elf = Elf(so_path)
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", "-j", ".text", so_path],
                         capture_output=True, text=True, check=True).stdout

    baked = _baked_def_names(dis, elf)
    classes = {}      # py name -> {"methods": {name: [[args]...]}, "properties": set, "cpp": ...}
    enums = {}        # py name -> [members]
    functions = {}    # module-level: name -> [[args]...]
    cpp2py = {}
    enum_cpp2py = {}
    docs = {}         # (owner, name) -> doc

    def cls(name):
        return classes.setdefault(name, {"methods": {}, "properties": []})

    def add_method(owner, name, args, doc):
        target = functions if owner is None else cls(owner)["methods"]
        lst = target.setdefault(name, [])
        if args not in lst:
            lst.append(args)
        if doc:
            docs.setdefault((owner, name), doc)

    regs, slots = {}, {}
    pending = []          # identifier strings loaded since last event, in order
    pending_docs = []
    last_cpp_type = None  # from lea of pybind11::class_<T>::... / typeinfo symbol
    cur_class = cur_enum = None
    sibling = None
    func_name = ""
    in_wrapper = False

    stored = []

    def reset_pending():
        pending.clear()
        stored.clear()
        pending_docs.clear()

    def pick_args(name, extra_exclude=(), nargs=None):
        seen, items = set(), []
        src_items = stored if stored else pending
        if nargs is not None:
            src_items = [p for p in src_items if p[0] != name]
            src_items = src_items[len(src_items) - nargs:] if nargs else []
        for s, off, idx in src_items:
            if s == name or s in extra_exclude or s in seen:
                continue
            seen.add(s)
            items.append((s, off, idx))
        doc = pending_docs[-1] if pending_docs else None
        return RawArgs(items, doc), doc

    for line in dis.splitlines():
        m = FUNC.match(line)
        if m:
            func_name = m.group(2)
            in_wrapper = func_name.startswith("pybind11::")
            sibling = None
            regs.clear(); slots.clear(); reset_pending()
            last_cpp_type = None
            continue
        m = INSN.match(line)
        if not m:
            continue
        op, rest = m.group(2), m.group(3)
        if op == "lea":
            lm = LEA_RIP.match(rest)
            if lm:
                reg, addr, sym = lm.group(1), int(lm.group(2), 16), lm.group(3) or ""
                val = None
                if "Doc::" in sym and sym.startswith("tensorrt::"):
                    d = elf.ptr_string(addr)
                    if d:
                        val = ("doc", d)
                else:
                    s = elf.cstr_at(addr)
                    if s is not None:
                        val = ("str", s)
                if sym.startswith("pybind11::class_<") or sym.startswith("pybind11::enum_<"):
                    last_cpp_type = _first_template_arg(sym, sym.split("<", 1)[0])
                if val is None:
                    regs.pop(reg, None)
                    continue
                regs[reg] = val
                if val[0] == "str" and IDENT.match(val[1]):
                    pending.append([val[1], None, len(pending)])
                elif val[0] == "doc" or (val[0] == "str" and len(val[1]) > 20 and " " in val[1]):
                    pending_docs.append(val[1])
            else:
                sm = re.match(r"^(-?0x[0-9a-f]+)\(%(rbp|rsp)\),%(r\w+)$", rest)
                if sm:
                    key = (sm.group(2), sm.group(1))
                    regs[sm.group(3)] = ("slotptr", key)
                    continue
                r = rest.rsplit(",%", 1)
                if len(r) == 2:
                    regs.pop(r[1].split()[0], None)
            continue
        if op in ("mov", "movq"):
            mm = MOV_RR.match(rest)
            if mm:
                if mm.group(1) in regs:
                    regs[mm.group(2)] = regs[mm.group(1)]
                else:
                    regs.pop(mm.group(2), None)
                continue
            mm = MOV_RM.match(rest)
            if mm:
                key = (mm.group(3), mm.group(2))
                if mm.group(1) in regs:
                    slots[key] = regs[mm.group(1)]
                    v = regs[mm.group(1)]
                    if v[0] == "str" and IDENT.match(v[1]):
                        # a py::arg temporary being filled: record (even if the string
                        # was loaded long before into a callee-saved register)
                        stored.append((v[1], int(key[1], 16), len(stored)))
                else:
                    slots.pop(key, None)
                continue
            mm = MOV_MR.match(rest)
            if mm:
                key = (mm.group(2), mm.group(1))
                if key in slots:
                    regs[mm.group(3)] = slots[key]
                else:
                    regs.pop(mm.group(3), None)
                continue
            if "," in rest:
                dst = rest.rsplit(",", 1)[1]
                if dst.startswith("%"):
                    regs.pop(dst[1:], None)
            continue
        if op == "call":
            cm = CALL.match(rest)
            callee = cm.group(2) if cm else ""
            callee_addr = int(cm.group(1), 16) if cm else -1
            kind = None if in_wrapper else _classify(callee)
            sv = lambda r: regs[r][1] if r in regs and regs[r][0] == "str" else None
            if kind == "class_ctor":
                py = baked.get(callee_addr) if "constprop" in callee else None
                py = py or sv("rdx") or baked.get(callee_addr)
                cpp = _first_template_arg(callee, "pybind11::class_")
                if py:
                    cpp2py[cpp] = py
                    cur_class = py
                    cls(py)["cpp"] = cpp
                reset_pending()
            elif kind == "type_record":
                reset_pending()
            elif kind == "class_init":
                py = next((p[0] for p in pending), None)
                if py:
                    if last_cpp_type:
                        cpp2py.setdefault(last_cpp_type, py)
                        cls(py).setdefault("cpp", last_cpp_type)
                    cls(py)
                    cur_class = py
                reset_pending()
            elif kind == "enum_ctor":
                py = sv("rdx") or baked.get(callee_addr)
                cpp = _first_template_arg(callee, "pybind11::enum_")
                if py:
                    enum_cpp2py[cpp] = py
                    cur_enum = py
                    enums.setdefault(py, [])
                reset_pending()
            elif kind == "enum_init":
                py = next((p[0] for p in pending), None)
                if py:
                    cur_enum = py
                    enums.setdefault(py, [])
                    if last_cpp_type:
                        enum_cpp2py.setdefault(last_cpp_type, py)
                reset_pending()
            elif kind == "enum_value":
                nm = sv("rsi")
                owner = cur_enum
                if callee.startswith("pybind11::enum_<"):
                    cpp = _first_template_arg(callee, "pybind11::enum_")
                    owner = enum_cpp2py.get(cpp, owner)
                if nm and owner:
                    if nm not in enums.setdefault(owner, []):
                        enums[owner].append(nm)
                reset_pending()
            elif kind in ("class_prop", "prop_impl"):
                nm = sv("rsi") or (baked.get(callee_addr) if kind == "class_prop" else None)
                owner = cur_class
                if kind == "class_prop":
                    owner = cpp2py.get(_first_template_arg(callee, "pybind11::class_"), owner)
                if nm and owner:
                    props = cls(owner)["properties"]
                    if nm not in props:
                        props.append(nm)
                    cur_class = owner
                reset_pending()
            elif kind in ("class_def", "add_method"):
                nm = baked.get(callee_addr) if kind == "class_def" else None
                nm = nm or sv("rsi")
                if kind == "class_def" and not nm:
                    nm = next((sv(r) for r in ("rdi", "rdx", "rcx", "r8", "r9") if sv(r)), None)
                if kind == "add_method" and not nm:
                    nm = sibling
                owner = cur_class
                if kind == "class_def":
                    owner = cpp2py.get(_first_template_arg(callee, "pybind11::class_"), owner)
                if nm and owner:
                    nargs = None
                    if kind == "class_def":
                        plist = callee[callee.rfind(">(") + 2:] if ">(" in callee else ""
                        nargs = len(re.findall(r"pybind11::arg(?:_v)? const&", plist))
                    args, doc = pick_args(nm, nargs=nargs)
                    add_method(owner, nm, args, doc)
                    cur_class = owner
                    reset_pending()
                elif kind == "class_def":
                    reset_pending()
            elif kind == "getattr":
                sibling = sv("rsi") if "PyObject_GetAttrString" in callee else sv("rdx")
            elif kind in ("module_def", "module_add"):
                nm = sv("rsi")
                if kind == "module_def" and not nm:
                    nm = baked.get(callee_addr) or next((sv(r) for r in ("rdi", "rdx", "rcx") if sv(r)), None)
                if nm and kind == "module_def":
                    args, doc = pick_args(nm)
                    add_method(None, nm, args, doc)
                elif nm and kind == "module_add" and pending:
                    args, doc = pick_args(nm)
                    if nm in pending or nm in functions:
                        add_method(None, nm, args, doc)
                reset_pending()
            for r in CALLER_SAVED:
                regs.pop(r, None)
            continue

    raws = [r for c in classes.values() for lst in c["methods"].values() for r in lst]
    raws += [r for lst in functions.values() for r in lst]
    direction, votes = _calibrate(raws)

    def fin(lst):
        out = []
        for r in lst:
            o = _order(r, direction)
            if o not in out:
                out.append(o)
        return out

    for c in classes.values():
        c["methods"] = {k: fin(v) for k, v in c["methods"].items() if k not in INTERNAL_METHODS}
    functions = {k: fin(v) for k, v in functions.items()}
    # drop internal pybind11 helpers registered on classes (e.g. enum helpers)
    out_classes = {}
    for name, c in sorted(classes.items()):
        if name in enums:
            continue
        meths = {}
        overloads = {}
        for mname, lst in sorted(c["methods"].items()):
            meths[mname] = lst[0]
            if len(lst) > 1:
                overloads[mname] = lst
        entry = {"methods": meths, "properties": sorted(c["properties"])}
        if overloads:
            entry["overloads"] = overloads
        if c.get("cpp"):
            entry["cpp"] = c["cpp"]
        out_classes[name] = entry
    out_funcs = {}
    for fname, lst in sorted(functions.items()):
        out_funcs[fname] = lst[0]
    return {"classes": out_classes,
            "arg_order_calibration": {"direction": "ascending" if direction == 1 else "descending", "votes": {"ascending": votes[1], "descending": votes[-1]}},
            "enums": {k: v for k, v in sorted(enums.items())},
            "functions": out_funcs}


def extract_trt(unpacked, version, whl):
    so = glob.glob(os.path.join(unpacked, "tensorrt*", "tensorrt*.so"))[0]
    res = extract_pybind11(so)
    pure = sorted(os.path.relpath(p, unpacked) for p in glob.glob(os.path.join(unpacked, "tensorrt*", "**", "*.py"), recursive=True))
    pyfuncs = {}
    for p in glob.glob(os.path.join(unpacked, "tensorrt*", "**", "*.py"), recursive=True):
        rel = os.path.relpath(p, os.path.join(unpacked, glob.glob(os.path.join(unpacked, "tensorrt*"))[0]))
        src = open(p, encoding="utf-8", errors="replace").read()
        for fm in re.finditer(r"^def ([A-Za-z]\w*)\(([^)]*)\)", src, re.M):
            params = [a.split(":")[0].split("=")[0].strip().lstrip("*") for a in fm.group(2).split(",") if a.strip()]
            pyfuncs.setdefault(rel.replace("/", ".")[:-3].replace(".__init__", ""), {})[fm.group(1)] = params
    return {"package": re.sub(r"-[0-9].*", "", os.path.basename(whl)).replace("_", "-"),
            "version": version, "wheel": os.path.basename(whl),
            "module": "tensorrt (tensorrt_bindings/tensorrt.so)",
            "extraction": "static: objdump disassembly of pybind11 registration calls",
            **res, "python_wrappers": pyfuncs, "pure_python_files": pure}


# --------------------------------------------------------------------------- cuda-python (Cython) static extraction
def _cython_docstrings(data):
    """Yield embedded Cython signature docstrings 'name(args)\\n...' from a .so."""
    for m in re.finditer(rb"(?<=\x00)([A-Za-z_]\w*)\(([^\x00\n)]*)\)(?: -> [^\x00\n]*)?\n([^\x00]*)", data):
        yield m.group(1).decode(), m.group(2).decode(errors="replace"), m.group(3).decode(errors="replace")


def _parse_params(argstr):
    out = []
    for a in argstr.split(","):
        a = a.strip()
        if not a or a in ("self", "*", "/"):
            continue
        a = a.split("=")[0].strip()
        if ":" in a:
            a = a.split(":")[0].strip()
        else:
            a = a.split()[-1]
        out.append(a.lstrip("*"))
    return out


def _returns(doc):
    """numpy-style 'Returns' section -> [first type name, then output value names]"""
    m = re.search(r"\n([ \t]*)Returns\n\1-{7}\n(.*?)(?=\n\1\S[^\n]*\n\1-{3,}|\Z)", "\n" + doc, re.S)
    if not m:
        return None
    ind = m.group(1)
    names = []
    for line in m.group(2).splitlines():
        if line.startswith(ind) and line[len(ind):len(ind) + 1] not in (" ", "\t", ""):
            names.append(line[len(ind):].split(":")[0].strip())
    return names


def _pxd_enums_structs(path):
    enums, structs, typedefs = {}, {}, {}
    cur, kind = None, None
    for raw in open(path, encoding="utf-8", errors="replace"):
        line = raw.split("#")[0].rstrip()
        if not line.strip():
            continue
        m = re.match(r"^\s*(?:cdef|ctypedef)\s+enum\s+(\w+)\s*:", line)
        if m:
            cur, kind = m.group(1), "enum"; enums.setdefault(cur, []); continue
        m = re.match(r"^\s*(?:cdef|ctypedef)\s+(?:struct|union)\s+(\w+)\s*:", line)
        if m:
            cur, kind = m.group(1), "struct"; structs.setdefault(cur, []); continue
        m = re.match(r"^\s*ctypedef\s+(?:enum\s+|struct\s+)?(\w+)\s+(\w+)\s*$", line)
        if m:
            typedefs[m.group(2)] = m.group(1); cur = None; continue
        if cur and raw.startswith((" ", "\t")) and re.match(r"^\s{2,}", raw):
            if kind == "enum":
                mm = re.match(r"^\s*(\w+)", line)
                if mm and mm.group(1) not in ("pass",):
                    if mm.group(1) not in enums[cur]:
                        enums[cur].append(mm.group(1))
            else:
                mm = re.match(r"^\s*(?:const\s+)?[\w ]+?[\s*]+(\w+)\s*(?:\[[^\]]*\])*\s*$", line)
                if mm and mm.group(1) not in structs[cur]:
                    structs[cur].append(mm.group(1))
        elif not raw.startswith((" ", "\t")):
            cur = None
    return enums, structs, typedefs


def extract_cython_module(so_path, pyx_path=None, pxd_c_path=None, pxd_path=None):
    data = open(so_path, "rb").read()
    functions, classes = {}, {}
    srcs = [data]
    if pyx_path and os.path.exists(pyx_path):
        # the .pyx docstrings carry the same text; add source defs as a fallback
        srcs.append(open(pyx_path, "rb").read())
    for blob in srcs[:1]:
        for name, argstr, doc in _cython_docstrings(blob):
            if name in functions:
                continue
            if not (name.startswith(("cuda", "cu", "nvrtc", "make_", "sizeof", "get"))):
                continue
            params = _parse_params(argstr)
            rets = _returns(doc)
            entry = {"args": params}
            if rets:
                entry["returns"] = rets
            functions[name] = entry
    if pyx_path and os.path.exists(pyx_path):
        src = open(pyx_path, encoding="utf-8", errors="replace").read()
        for fm in re.finditer(r"^def (\w+)\(([^)]*)\)", src, re.M):
            if fm.group(1) not in functions:
                functions[fm.group(1)] = {"args": _parse_params(fm.group(2)), "source": "pyx"}
        for cm in re.finditer(r"^cdef class (\w+)", src, re.M):
            classes.setdefault(cm.group(1), {})
        for cm in re.finditer(r"^class (\w+)\((?:IntEnum|_FastEnum|\w*Enum\w*)\)", src, re.M):
            classes.setdefault(cm.group(1), {"enum": True})
    if pxd_path and os.path.exists(pxd_path):
        for cm in re.finditer(r"^cdef class (\w+)", open(pxd_path, encoding="utf-8", errors="replace").read(), re.M):
            classes.setdefault(cm.group(1), {})
    enums, structs, typedefs = ({}, {}, {})
    if pxd_c_path and os.path.exists(pxd_c_path):
        enums, structs, typedefs = _pxd_enums_structs(pxd_c_path)
    return functions, classes, enums, structs, typedefs


def extract_cuda(unpacked, version, whl):
    base = os.path.join(unpacked, "cuda")
    out = {"package": re.sub(r"-[0-9].*", "", os.path.basename(whl)).replace("_", "-"),
           "version": version, "wheel": os.path.basename(whl),
           "extraction": "static: Cython embedsignature docstrings in .so + cy*.pxd declarations",
           "modules": {}}
    legacy = {}
    for mod in ("cudart", "cuda", "nvrtc"):
        p = os.path.join(base, mod + ".pyx")
        if os.path.exists(p):
            legacy["cuda." + mod] = re.findall(r"^from (\S+) import \*", open(p).read(), re.M)
    out["legacy_modules"] = legacy  # e.g. cuda.cudart -> re-exports cuda.bindings.runtime
    for mod, cy in (("runtime", "cyruntime"), ("driver", "cydriver"), ("nvrtc", "cynvrtc")):
        so = glob.glob(os.path.join(base, "bindings", mod + ".cpython-*.so"))
        if not so:
            continue
        functions, classes, enums, structs, typedefs = extract_cython_module(
            so[0], os.path.join(base, "bindings", mod + ".pyx"),
            os.path.join(base, "bindings", cy + ".pxd"), os.path.join(base, "bindings", mod + ".pxd"))
        # Python enum class names: C enum name, plus its "_t"/typedef aliases
        py_enums = {}
        alias = {}
        for td, src in typedefs.items():
            alias.setdefault(src, []).append(td)
        for en, members in enums.items():
            names = [en] + alias.get(en, [])
            py = next((n for n in names if n in classes), None) or next((n for n in names if n.endswith("_t")), en)
            py_enums[py] = members
        py_classes = {}
        for cn, info in sorted(classes.items()):
            if info.get("enum") or cn in py_enums:
                continue
            fields = structs.get(cn) or structs.get(typedefs.get(cn, ""), []) or []
            if not fields:
                for src, tds in alias.items():
                    if cn in tds:
                        fields = structs.get(src, [])
            if not fields and cn.endswith("_st") is False:
                fields = structs.get(cn + "_st", [])
            py_classes[cn] = {"properties": fields}
        keep = {}
        for k, v in functions.items():
            if "returns" not in v and k in py_classes:      # Cython class constructor signature
                py_classes[k]["init"] = v["args"]
            else:
                keep[k] = v
        if mod != "runtime":   # keep driver/nvrtc small: names + args only
            keep = {k: v["args"] for k, v in keep.items()}
            py_enums = {k: v for k, v in py_enums.items() if k in ("CUresult", "nvrtcResult", "CUdevice_attribute")}
            py_classes = {}
        out["modules"]["cuda.bindings." + mod] = {"functions": dict(sorted(keep.items())),
                                                   "classes": py_classes,
                                                   "enums": dict(sorted(py_enums.items()))}
    out["return_convention"] = ("every wrapped API returns a tuple whose first element is the error enum "
                                "(cudaError_t / CUresult / nvrtcResult), followed by the output values "
                                "listed under 'returns'[1:]; functions with no outputs return a 1-tuple (err,)")
    return out


# --------------------------------------------------------------------------- optional cross-check (imports against stub libs)
STUB_C = r"""
void* createInferBuilder_INTERNAL(){return 0;} void* createInferRefitter_INTERNAL(){return 0;}
void* createInferRuntime_INTERNAL(){return 0;} void* createNvOnnxParserRefitter_INTERNAL(){return 0;}
void* createNvOnnxParser_INTERNAL(){return 0;} void* getBuilderPluginRegistry(){return 0;}
int getNvOnnxParserVersion(){return 0;} void* getPluginRegistry(){return 0;} int initLibNvInferPlugins(){return 0;}
"""

INTROSPECT = r"""
import importlib.util, json, re, sys, inspect
spec = importlib.util.spec_from_file_location("tensorrt", sys.argv[1])
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
def sigs(obj, name):
    doc = getattr(obj, "__doc__", "") or ""
    out = []
    for mm in re.finditer(r"(?:^|\n)(?:\d+\. )?" + re.escape(name) + r"\((.*?)\)(?: -> ([^\n]*))?\n", doc):
        depth, cur, parts = 0, "", []
        for ch in mm.group(1):
            if ch in "[(": depth += 1
            if ch in "])": depth -= 1
            if ch == "," and depth == 0: parts.append(cur); cur = ""
            else: cur += ch
        if cur.strip(): parts.append(cur)
        ps = [p.split(":")[0].strip() for p in parts]
        ps = [p for p in ps if p and p not in ("self", "*args", "**kwargs")]
        out.append({"args": ps, "sig": mm.group(0).strip().split(". ", 1)[-1]})
    return out
res = {"classes": {}, "enums": {}, "functions": {}}
for n, o in vars(m).items():
    if isinstance(o, type) and hasattr(o, "__members__") and hasattr(o, "__entries"):
        res["enums"][n] = list(o.__members__)
    elif isinstance(o, type):
        c = {"methods": {}, "properties": []}
        for a, v in vars(o).items():
            if isinstance(v, property): c["properties"].append(a)
            elif a.startswith("__") and a not in ("__init__", "__call__", "__getitem__", "__setitem__", "__len__"): continue
            elif callable(v) or isinstance(v, (staticmethod, classmethod)):
                f = v.__func__ if isinstance(v, (staticmethod, classmethod)) else v
                c["methods"][a] = sigs(f, a)
        res["classes"][n] = c
    elif callable(o):
        res["functions"][n] = sigs(o, n)
json.dump(res, sys.stdout)
"""


def crosscheck_trt(unpacked, static, outpath):
    so = glob.glob(os.path.join(unpacked, "tensorrt*", "tensorrt*.so"))[0]
    needed = re.findall(r"\[(libnv[^\]]+)\]", subprocess.run(["readelf", "-d", so], capture_output=True, text=True).stdout)
    stubdir = os.path.join(os.path.dirname(outpath), "_stubs")
    os.makedirs(stubdir, exist_ok=True)
    c = os.path.join(stubdir, "stub.c")
    open(c, "w").write(STUB_C)
    for lib in needed:
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", os.path.join(stubdir, lib), c, "-Wl,-soname," + lib], check=True)
    env = dict(os.environ, LD_LIBRARY_PATH=stubdir)
    r = subprocess.run([sys.executable, "-c", INTROSPECT, so], capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    truth = json.loads(r.stdout)
    json.dump(truth, open(outpath, "w"), separators=(",", ":"), sort_keys=True)
    return compare(static, truth)


def compare(static, truth):
    rep = {"classes_missing": [], "classes_extra": [], "methods_missing": [], "methods_extra": [],
           "args_mismatch": [], "props_missing": [], "props_extra": [], "enums_missing": [],
           "enum_members_mismatch": [], "functions_missing": [], "functions_args_mismatch": []}
    n = {"classes": 0, "methods": 0, "args_ok": 0, "props": 0, "enum_members": 0}
    skip_cls = lambda k: k.startswith("_")
    for cn, tc in truth["classes"].items():
        if skip_cls(cn):
            continue
        n["classes"] += 1
        sc = static["classes"].get(cn)
        if sc is None:
            rep["classes_missing"].append(cn)
            continue
        for mn, tsigs in tc["methods"].items():
            if (mn.startswith("__") and mn != "__init__") or mn in INTERNAL_METHODS:
                continue
            if mn == "__init__" and all(not s["args"] for s in tsigs) and mn not in sc["methods"]:
                continue   # pybind11's implicit "No constructor defined" __init__
            n["methods"] += 1
            if mn not in sc["methods"]:
                rep["methods_missing"].append(cn + "." + mn)
                continue
            targs = [s["args"] for s in tsigs]
            sargs = sc.get("overloads", {}).get(mn, [sc["methods"][mn]])
            if any(a in targs for a in sargs) and all(a in targs for a in sargs):
                n["args_ok"] += 1
            else:
                rep["args_mismatch"].append("%s.%s static=%s truth=%s" % (cn, mn, sargs, targs))
        for mn in sc["methods"]:
            if mn not in tc["methods"]:
                rep["methods_extra"].append(cn + "." + mn)
        n["props"] += len(tc["properties"])
        rep["props_missing"] += [cn + "." + p for p in tc["properties"] if p not in sc["properties"]]
        rep["props_extra"] += [cn + "." + p for p in sc["properties"] if p not in tc["properties"]]
    rep["classes_extra"] = [c for c in static["classes"] if c not in truth["classes"]]
    for en, members in truth["enums"].items():
        n["enum_members"] += len(members)
        if en not in static["enums"]:
            rep["enums_missing"].append(en)
        elif sorted(members) != sorted(static["enums"][en]):
            rep["enum_members_mismatch"].append("%s missing=%s extra=%s" % (
                en, sorted(set(members) - set(static["enums"][en])), sorted(set(static["enums"][en]) - set(members))))
    for fn, tsigs in truth["functions"].items():
        if fn not in static["functions"]:
            rep["functions_missing"].append(fn)
        elif static["functions"][fn] not in [s["args"] for s in tsigs]:
            rep["functions_args_mismatch"].append("%s static=%s truth=%s" % (fn, static["functions"][fn], [s["args"] for s in tsigs]))
    rep["counts_truth"] = n
    return rep


# --------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outdir", default=os.path.join(HERE, "data"))
    ap.add_argument("--workdir", default=os.path.join(HERE, "work"))
    ap.add_argument("--skip-download", action="store_true", help="reuse wheels already in WORKDIR/wheels")
    ap.add_argument("--crosscheck", action="store_true",
                    help="also import tensorrt.so against generated stub libnv* libraries (needs gcc) "
                         "and diff the static result against runtime pybind11 signatures")
    ap.add_argument("--only", help="comma list of output stems to build")
    a = ap.parse_args()
    if not shutil.which("objdump"):
        sys.exit("objdump (binutils) is required for the TensorRT extraction")
    os.makedirs(a.outdir, exist_ok=True)
    wheeldir = os.path.join(a.workdir, "wheels")
    for stem, req, kind in TARGETS:
        if a.only and stem not in a.only.split(","):
            continue
        if a.skip_download:
            pkg = req.split("==")[0].replace("-", "_")
            ver = req.split("==")[1].rstrip("*").rstrip(".")
            cands = sorted(glob.glob(os.path.join(wheeldir, "%s-%s*.whl" % (pkg, ver))))
            whl = cands[-1]
        else:
            whl = download(req, wheeldir)
        ver = wheel_version(whl)
        d = unpack(whl, a.workdir)
        res = extract_trt(d, ver, whl) if kind == "trt" else extract_cuda(d, ver, whl)
        path = os.path.join(a.outdir, stem + ".json")
        with open(path, "w") as f:
            json.dump(res, f, separators=(",", ":"), sort_keys=True)
        print("%-16s %-40s -> %s (%d KB)" % (stem, os.path.basename(whl), path, os.path.getsize(path) // 1024))
        if a.crosscheck and kind == "trt":
            rep = crosscheck_trt(d, res, os.path.join(a.workdir, stem + ".runtime.json"))
            rp = os.path.join(a.workdir, stem + ".crosscheck.json")
            json.dump(rep, open(rp, "w"), indent=1)
            print("   crosscheck:", {k: (len(v) if isinstance(v, list) else v) for k, v in rep.items()}, "->", rp)


if __name__ == "__main__":
    main()
