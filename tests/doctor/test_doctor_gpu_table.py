"""The PCI id table: names, families and gfx targets against the public sources it was built from."""
from __future__ import annotations

import pytest

from navitrain.doctor import gpus
from navitrain.doctor.gpus import family_of, gfx_from_target_version, identify, override_to_gfx, target_version_of

# rocm_agent_enumerator (ROCm/rocminfo) id lists for the RDNA1 ISAs (data/gpus.json names the commit it read).
RDNA1_IDS = {
    "gfx1010": [0x7310, 0x7312, 0x7318, 0x7319, 0x731A, 0x731B, 0x731E, 0x731F],
    "gfx1011": [0x7360, 0x7362],
    "gfx1012": [0x7340, 0x7341, 0x7347, 0x734F],
}


@pytest.mark.parametrize("gfx,ids", sorted(RDNA1_IDS.items()))
def test_rdna1_ids_map_to_their_isa(gfx, ids):
    for device in ids:
        ident = identify(0x1002, device)
        assert (ident.gfx_target, ident.family, ident.known) == (gfx, "RDNA1", True), hex(device)


@pytest.mark.parametrize("revision,name", [
    (0xC0, "AMD Radeon RX 5700 XT 50th Anniversary"), (0xC1, "AMD Radeon RX 5700 XT"), (0xC5, "AMD Radeon RX 5700 XT"),
    (0xC4, "AMD Radeon RX 5700"), (0xCA, "AMD Radeon RX 5600 XT"), (0xCB, "AMD Radeon RX 5600 OEM"),
    (0xC2, "AMD Radeon RX 5600M"), (0xC3, "AMD Radeon RX 5700M"),
])
def test_0x731f_name_depends_on_the_revision(revision, name):
    assert identify(0x1002, 0x731F, revision).name == name


def test_unknown_revision_falls_back_to_the_pci_ids_product_list():
    assert identify(0x1002, 0x731F, 0x01).name == "AMD Radeon RX 5600 OEM/5600 XT / 5700/5700 XT"
    assert identify(0x1002, 0x731F, None).chip == "Navi 10"


@pytest.mark.parametrize("device,revision,name,family,gfx", [
    (0x7340, 0xC5, "AMD Radeon RX 5500 XT", "RDNA1", "gfx1012"),
    (0x7340, 0xC7, "AMD Radeon RX 5500", "RDNA1", "gfx1012"),
    (0x7360, 0xC3, "AMD Radeon Pro V520", "RDNA1", "gfx1011"),
    (0x7312, 0x00, "AMD Radeon Pro W5700", "RDNA1", "gfx1010"),
    (0x73BF, 0xC1, "AMD Radeon RX 6800 XT", "RDNA2", "gfx1030"),
    (0x73DF, 0xC1, "AMD Radeon RX 6700 XT", "RDNA2", "gfx1031"),
    (0x73FF, 0xC7, "AMD Radeon RX 6600", "RDNA2", "gfx1032"),
    (0x743F, 0xC1, "AMD Radeon RX 6500 XT", "RDNA2", "gfx1034"),
    (0x744C, 0xC8, "AMD Radeon RX 7900 XTX", "RDNA3", "gfx1100"),
    (0x744C, 0xCE, "AMD Radeon RX 7900 GRE", "RDNA3", "gfx1100"),
    (0x7448, 0x00, "AMD Radeon Pro W7900", "RDNA3", "gfx1100"),
    (0x747E, 0xC8, "AMD Radeon RX 7800 XT", "RDNA3", "gfx1101"),
    (0x7480, 0xCF, "AMD Radeon RX 7600", "RDNA3", "gfx1102"),
    (0x15BF, 0xC1, "AMD Radeon 780M Graphics", "RDNA3", "gfx1103"),
    (0x1586, 0xC1, "AMD Radeon 8060S Graphics", "RDNA3.5", "gfx1151"),
    (0x7590, 0xC0, "AMD Radeon RX 9060 XT", "RDNA4", "gfx1200"),
    (0x7550, 0xC0, "AMD Radeon RX 9070 XT", "RDNA4", "gfx1201"),
    (0x7551, 0xC0, "AMD Radeon AI PRO R9700", "RDNA4", "gfx1201"),
    (0x687F, 0xC1, "AMD Radeon RX Vega", "GCN5", "gfx900"),
    (0x66AF, 0xC1, "AMD Radeon VII", "GCN5", "gfx906"),
    (0x6861, 0x00, "AMD Radeon Pro WX 9100", "GCN5", "gfx900"),
    (0x738C, 0x01, "AMD Instinct MI100", "CDNA1", "gfx908"),
    (0x74A1, 0x00, "AMD Instinct MI300X", "CDNA3", "gfx942"),
])
def test_consumer_and_workstation_cards(device, revision, name, family, gfx):
    ident = identify(0x1002, device, revision)
    assert (ident.name, ident.family, ident.gfx_target) == (name, family, gfx)


def test_apus_are_marked_integrated():
    assert identify(0x1002, 0x15BF, 0xC1).integrated is True
    assert identify(0x1002, 0x164E).integrated is True  # Raphael
    assert identify(0x1002, 0x744C, 0xC8).integrated is False


def test_other_vendors_are_recognised_but_not_identified():
    for vendor, name in ((0x10DE, "NVIDIA"), (0x8086, "Intel"), (0x106B, "Apple")):
        ident = identify(vendor, 0x1234, 0xA1)
        assert ident.vendor == name and ident.known is False and ident.gfx_target is None
    unknown = identify(0xFFFE, 0x1)
    assert unknown.vendor is None and unknown.known is False
    assert identify(0x1002, 0xFFFF).known is False  # AMD, but not a GPU in the table


def test_table_covers_every_family_asked_for_and_cites_sources():
    table = gpus.table()
    families = {chip["family"] for chip in table["chips"].values()}
    assert {"GCN5", "RDNA1", "RDNA2", "RDNA3", "RDNA4"} <= families
    assert {"pci.ids", "amdgpu.ids", "rocm_agent_enumerator", "kfd_device.c"} <= set(table["sources"])
    for device, entry in table["devices"].items():
        assert entry["chip"] in table["chips"], device
        assert len(device) == 4 and int(device, 16) >= 0
    for chip in table["chips"].values():  # the prefix rules agree with the table
        assert family_of(chip["gfx"]) == chip["family"] or (
            chip["family"] in ("GCN3", "GCN4") and family_of(chip["gfx"]) == "GCN3/4")


@pytest.mark.parametrize("value,gfx", [
    # kfd_device.c: gfx_target_version = major*10000 + minor*100 + stepping
    (100100, "gfx1010"), (100101, "gfx1011"), (100102, "gfx1012"), (100300, "gfx1030"), (100302, "gfx1032"),
    (110000, "gfx1100"), (110001, "gfx1101"), (110003, "gfx1103"), (110501, "gfx1151"), (120001, "gfx1201"),
    (90010, "gfx90a"), (90012, "gfx90c"), (90402, "gfx942"), (80003, "gfx803"),
])
def test_gfx_target_version_round_trip(value, gfx):
    assert gfx_from_target_version(value) == gfx
    assert target_version_of(gfx) == value


@pytest.mark.parametrize("bad", [0, -1, 5, 100, 1001600, None, "100100", True])
def test_gfx_target_version_rejects_non_versions(bad):
    assert gfx_from_target_version(bad) is None


@pytest.mark.parametrize("value,gfx", [("10.3.0", "gfx1030"), ("10.1.0", "gfx1010"), ("11.0.0", "gfx1100"),
                                       (" 9.0.10 ", "gfx90a"), ("10.3", None), ("abc", None), ("", None), (None, None)])
def test_override_to_gfx(value, gfx):
    assert override_to_gfx(value) == gfx
