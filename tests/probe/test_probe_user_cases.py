"""A user's own case file, as docs/probe.md shows it: listed in a child, run and compared on cpu."""
import textwrap

import pytest

from navitrain.probe import session
from navitrain.probe.runner import list_cases_in_file

USER_FILE = textwrap.dedent('''
    import torch
    import navitrain.probe

    @navitrain.probe.case("my-gelu-mlp")
    def my_gelu_mlp(device):
        layer = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)).to(device)
        x = torch.randn(8, 16).to(device).requires_grad_(True)
        y = layer(x)
        y.square().mean().backward()
        return y, x.grad, layer[0].weight.grad

    @navitrain.probe.case("my-fp16-softmax", dtype="float16")
    def my_fp16_softmax(device, dtype):
        x = torch.randn(4, 100).to(device=device, dtype=dtype)
        return torch.softmax(x * 4, dim=-1)
''')


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_cases.py"
    path.write_text(USER_FILE)
    return str(path)


def test_user_cases_are_listed_and_run(user_file):
    found = list_cases_in_file(user_file)
    assert [c.name for c in found] == ["my-gelu-mlp", "my-fp16-softmax"]
    assert all(c.source == f"file:{user_file}" for c in found)
    run = session.run(found, ["cpu"], jobs=2, timeout=60)
    outcomes = {r.case: r for r in run.results}
    assert outcomes["my-gelu-mlp"].outcome == "pass", outcomes["my-gelu-mlp"].detail
    assert outcomes["my-gelu-mlp"].detail.startswith("3 outputs")
    assert outcomes["my-fp16-softmax"].outcome == "pass", outcomes["my-fp16-softmax"].detail


def test_broken_case_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        list_cases_in_file(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("import navitrain.probe\nraise ImportError('no module named mylib')\n")
    with pytest.raises(ValueError, match="failed to import: ImportError: no module named mylib"):
        list_cases_in_file(str(broken))
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no cases"):
        list_cases_in_file(str(empty))
