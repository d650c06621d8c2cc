"""One libvirt ``<interface>`` element (docs/formatdomain.rst), read as the link and datapath
``vnetbe serve`` should give a guest: ``type='direct'`` is a macvtap on ``<source dev mode>``,
``type='bridge'`` a tap on ``<source bridge>``, ``<driver name='vhost'>`` the vhost datapath.
``type='vhostuser'`` is the socket QEMU reaches vnetbe on (``<source type='unix' path mode>``: libvirt's
mode is QEMU's side, so 'client' means vnetbe listens), with the link named on serve's command line.

The XML comes from a person's file: a DTD or an entity is refused before anything is parsed (no
expansion bombs, no external files), and the typographic quotes that copying from a web page brings
(the write-up's ``dev=‘eth0’``) are read as the straight quotes they stand for, with a note.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
import xml.parsers.expat
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..spec import MAX_QUEUE_PAIRS

# libvirt's spellings of the macvtap modes; libvirt's default is vepa.
MODES = {"vepa": "vepa", "bridge": "bridge", "private": "private", "passthrough": "passthru"}
DEFAULT_MODE = "vepa"
_CURLY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_KNOWN = {"mac", "source", "model", "driver", "target", "address", "alias"}


@dataclass
class InterfaceSpec:
    kind: str                      # "macvtap", "tap", or "vhostuser" (the link comes from elsewhere)
    datapath: str                  # "user" or "vhost"
    mac: str | None = None
    parent: str | None = None      # macvtap: <source dev>
    mode: str | None = None        # macvtap: vnetbe's name of the mode
    bridge: str | None = None      # tap: <source bridge>
    name: str | None = None        # <target dev>: the interface's name, if given
    socket: str | None = None      # vhostuser: <source path>
    client: bool = False           # vhostuser: QEMU listens (<source mode='server'>), vnetbe connects
    queues: int = 1                # <driver queues>
    notes: list[str] = field(default_factory=list)


def _refuse_declarations(text: str, where: str) -> None:
    def refuse(*_args):
        raise ConfigError(f"{where}: DTDs and entities are not accepted in an <interface> file")
    p = xml.parsers.expat.ParserCreate()
    p.StartDoctypeDeclHandler = refuse
    p.EntityDeclHandler = refuse
    p.ExternalEntityRefHandler = refuse
    try:
        p.Parse(text, True)
    except xml.parsers.expat.ExpatError as e:
        raise ConfigError(f"{where} is not well-formed XML: {e}") from None


def parse_interface(text: str, where: str = "interface XML") -> InterfaceSpec:
    notes = []
    straight = text.translate(_CURLY)
    if straight != text:
        notes.append("typographic quotes were read as straight quotes")
    _refuse_declarations(straight, where)
    root = ET.fromstring(straight)
    if root.tag != "interface":
        raise ConfigError(f"{where}: the root element is <{root.tag}>, expected one <interface>")
    for child in root:
        if child.tag not in _KNOWN:
            notes.append(f"<{child.tag}> ignored")
    model = root.find("model")
    mtype = model.get("type") if model is not None else None
    if mtype != "virtio":
        raise ConfigError(f"{where}: <model type='{mtype or ''}'/>: vnetbe is a virtio-net device, so the "
                          "interface needs <model type='virtio'/>")
    driver = root.find("driver")
    dname = driver.get("name") if driver is not None else None
    if dname not in (None, "vhost", "qemu"):
        raise ConfigError(f"{where}: <driver name='{dname}'/>: use 'vhost' (kernel datapath) or 'qemu' (userspace)")
    datapath = "vhost" if dname == "vhost" else "user"
    queues_attr = driver.get("queues", "1") if driver is not None else "1"
    if not queues_attr.isdigit() or int(queues_attr) < 1:
        raise ConfigError(f"{where}: <driver queues='{queues_attr}'/>: a number of queue pairs, 1 or more")
    queues = int(queues_attr)
    if queues > MAX_QUEUE_PAIRS:
        raise ConfigError(f"{where}: <driver queues='{queues}'/>: vnetbe serves up to {MAX_QUEUE_PAIRS} "
                          "queue pairs")
    mac = root.find("mac")
    mac_addr = mac.get("address") if mac is not None else None
    target = root.find("target")
    name = target.get("dev") if target is not None else None
    source = root.find("source")
    itype = root.get("type")
    if itype == "direct":
        dev = source.get("dev") if source is not None else None
        if not dev:
            raise ConfigError(f"{where}: type='direct' needs <source dev='PARENT' mode='...'/>")
        mode = source.get("mode", DEFAULT_MODE)
        if mode not in MODES:
            raise ConfigError(f"{where}: <source mode='{mode}'>: one of {', '.join(MODES)}")
        if "mode" not in source.attrib:
            notes.append(f"no <source mode>: libvirt's default, {DEFAULT_MODE}")
        return InterfaceSpec("macvtap", datapath, mac_addr, parent=dev, mode=MODES[mode], name=name, notes=notes)
    if itype == "bridge":
        br = source.get("bridge") if source is not None else None
        if not br:
            raise ConfigError(f"{where}: type='bridge' needs <source bridge='BRIDGE'/>: the bridge the tap joins")
        return InterfaceSpec("tap", datapath, mac_addr, bridge=br, name=name, notes=notes)
    if itype == "vhostuser":
        if dname == "vhost":
            raise ConfigError(f"{where}: <driver name='vhost'/> does not go with type='vhostuser' (libvirt refuses it "
                              "too): choose serve's datapath with --datapath")
        path = source.get("path") if source is not None else None
        stype = source.get("type", "unix") if source is not None else None
        smode = source.get("mode") if source is not None else None
        if not path or stype != "unix" or smode not in ("client", "server"):
            raise ConfigError(f"{where}: type='vhostuser' needs <source type='unix' path='SOCKET' "
                              "mode='client|server'/> (QEMU's side: 'client' means vnetbe listens)")
        return InterfaceSpec("vhostuser", datapath, mac_addr, name=name, notes=notes, socket=path,
                             client=smode == "server", queues=queues)
    raise ConfigError(f"{where}: <interface type='{itype}'>: vnetbe serves type='direct' (macvtap), "
                      "type='bridge' (tap) and type='vhostuser' (its socket)")
