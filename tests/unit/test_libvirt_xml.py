"""libvirt <interface> elements, as the write-up gives them, read as the link and datapath to serve."""
from __future__ import annotations

import pytest

from vnetbe.errors import ConfigError
from vnetbe.tools.libvirt_xml import parse_interface

# The write-up's first example, typographic quotes and all.
WRITEUP_DIRECT = """<interface type='direct'>
   <mac address='1a:2b:3c:4d:5e:6a'/>
   <source dev=\u2018eth0\u2019 mode=\u2018bridge' />
   <model type=\u2018e1000\u2019 />
   <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
</interface>"""
WRITEUP_BRIDGE = """<interface type='bridge'>
      <mac address='1a:2b:3c:4d:5e:6a'/>
      <model type=\u2018virtio\u2019 />
      <driver name=\u2018vhost\u2019 />
</interface>"""


def test_the_writeups_e1000_example_is_refused_because_vnetbe_is_virtio():
    with pytest.raises(ConfigError, match="vnetbe is a virtio-net device"):
        parse_interface(WRITEUP_DIRECT)


def test_the_writeups_direct_example_with_virtio_is_a_bridge_mode_macvtap_on_its_source():
    spec = parse_interface(WRITEUP_DIRECT.replace("e1000", "virtio"))
    assert (spec.kind, spec.parent, spec.mode, spec.mac, spec.datapath) == (
        "macvtap", "eth0", "bridge", "1a:2b:3c:4d:5e:6a", "user")
    assert "typographic quotes were read as straight quotes" in spec.notes


def test_the_writeups_bridge_example_needs_the_bridge_it_leaves_out():
    with pytest.raises(ConfigError, match="needs <source bridge="):
        parse_interface(WRITEUP_BRIDGE)
    spec = parse_interface(WRITEUP_BRIDGE.replace("<model", "<source bridge='br0'/><model"))
    assert (spec.kind, spec.bridge, spec.datapath) == ("tap", "br0", "vhost")


@pytest.mark.parametrize("libvirt,vnetbe", [("passthrough", "passthru"), ("vepa", "vepa"), ("private", "private")])
def test_libvirt_mode_names_map_to_macvtap_modes(libvirt, vnetbe):
    x = f"<interface type='direct'><source dev='p0' mode='{libvirt}'/><model type='virtio'/></interface>"
    assert parse_interface(x).mode == vnetbe


def test_no_mode_is_libvirts_default_vepa_said_in_a_note():
    spec = parse_interface("<interface type='direct'><source dev='p0'/><model type='virtio'/></interface>")
    assert spec.mode == "vepa" and any("default" in n for n in spec.notes)


def test_unknown_elements_are_ignored_with_a_note():
    spec = parse_interface("<interface type='direct'><source dev='p0'/><model type='virtio'/><bandwidth/>"
                           "</interface>")
    assert "<bandwidth> ignored" in spec.notes


@pytest.mark.parametrize("doc", [
    "<!DOCTYPE interface [<!ENTITY x 'direct'>]><interface type='&x;'/>",
    "<!DOCTYPE interface SYSTEM 'file:///etc/passwd'><interface/>",
    "<!DOCTYPE l [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;&a;&a;'>]><interface type='direct'>&b;</interface>",
])
def test_dtds_and_entities_are_refused(doc):
    with pytest.raises(ConfigError, match="DTDs and entities are not accepted"):
        parse_interface(doc)


@pytest.mark.parametrize("doc,msg", [
    ("<interface type='direct'><model type='virtio'/></interface>", "needs <source dev="),
    ("<interface type='network'><model type='virtio'/></interface>", "type='vhostuser'"),
    ("<domain/>", "expected one <interface>"),
    ("<interface", "not well-formed"),
    ("<interface type='direct'><source dev='p0' mode='nat'/><model type='virtio'/></interface>", "mode='nat'"),
    ("<interface type='direct'><source dev='p0'/><model type='virtio'/><driver name='x'/></interface>", "driver"),
])
def test_incomplete_or_foreign_interfaces_are_refused_in_one_line(doc, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_interface(doc)


VHOSTUSER = """<interface type='vhostuser'>
  <mac address='52:54:00:78:00:02'/>
  <source type='unix' path='/tmp/vnb-vu.sock' mode='client'/>
  <model type='virtio'/>
  <driver queues='1'/>
</interface>"""


def test_a_vhostuser_interface_names_the_socket_and_which_side_listens():
    spec = parse_interface(VHOSTUSER)
    assert (spec.kind, spec.socket, spec.client, spec.mac, spec.queues, spec.datapath) == (
        "vhostuser", "/tmp/vnb-vu.sock", False, "52:54:00:78:00:02", 1, "user")
    spec = parse_interface(VHOSTUSER.replace("mode='client'", "mode='server'"))
    assert spec.client        # QEMU listens: vnetbe connects


@pytest.mark.parametrize("change,msg", [
    (("mode='client'", ""), "mode='client|server'"),
    (("path='/tmp/vnb-vu.sock' ", ""), "path='SOCKET'"),
    (("queues='1'", "queues='17'"), "up to 16 queue pairs"),
    (("queues='1'", "queues='x'"), "a number of queue pairs"),
    (("<driver queues='1'/>", "<driver name='vhost'/>"), "does not go with type='vhostuser'"),
])
def test_a_vhostuser_interface_vnetbe_cannot_serve_is_refused_in_one_line(change, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_interface(VHOSTUSER.replace(*change))
