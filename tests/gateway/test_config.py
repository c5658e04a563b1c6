"""Gateway configuration: a good file loads; a broken one names every mistake with its line."""

from __future__ import annotations

import pytest

from redirgate.gateway.config import ConfigErrors, load_config
from tests.support.gateway_configs import GOOD, write


def test_good_config_loads_with_defaults(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.cert == tmp_path / "gw.pem"
    stick, keyboard = config.routes
    assert stick.allow_defaulted and stick.allows("127.0.0.1") and not stick.allows("10.1.2.3")
    assert stick.protocol == "usbredir"
    assert keyboard.allows("10.9.8.7") and keyboard.allows("192.168.1.7") and not keyboard.allows("192.168.1.8")
    assert keyboard.allows("::ffff:10.0.0.1")
    assert config.route("keyboard") is keyboard


def test_broken_config_names_every_mistake_with_its_line(tmp_path):
    text = GOOD.replace('cert = "gw.pem"', 'cert = "missing.pem"')
    text = text.replace('device = "usb-port:1-2.3"', 'device = "usb:zz:1"')
    text = text.replace('allow = ["10.0.0.0/8", "192.168.1.7"]', 'allow = ["10.0.0.0/33"]\ncolour = "blue"')
    text += '\n[[route]]\nname = "stick"\nlisten = "127.0.0.1:5001"\nclient = "x"\ndevice = "usb:1209:0002"\n'
    path = write(tmp_path, text)
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    lines = {(p.key, p.line) for p in info.value.problems}
    assert ("gateway.cert", 3) in lines
    assert ("route[1].device", 19) in lines
    assert ("route[1].allow", 20) in lines
    assert ("route[1].colour", 21) in lines
    assert ("route[2].name", 24) in lines  # duplicate name
    assert ("route[2].listen", 25) in lines  # port already used
    text_out = str(info.value)
    assert f"{path}:3: gateway.cert: file" in text_out


def test_invalid_toml_gives_the_line(tmp_path):
    path = write(tmp_path, GOOD + "\nbroken = [\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.line is not None and problem.line >= 21
    assert "not valid TOML" in problem.reason
    mid = write(tmp_path, GOOD.replace('name = "keyboard"', "name = keyboard"))
    with pytest.raises(ConfigErrors) as info:
        load_config(mid)
    assert info.value.problems[0].line == 16


def test_missing_gateway_table(tmp_path):
    path = write(tmp_path, "[[route]]\nname='x'\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    assert any("missing [gateway]" in p.reason for p in info.value.problems)


def test_route_line_settings_are_checked(tmp_path):
    import pytest as _pytest

    from redirgate.gateway.config import ConfigErrors, load_config

    base = """[gateway]
tunnel_listen = "127.0.0.1:0"
cert = "c"
key = "k"
ca = "a"
crl = ""

[[route]]
name = "console"
listen = "127.0.0.1:0"
client = "thin-01"
device = "{device}"
settings = "{settings}"
"""
    good = tmp_path / "good.toml"
    good.write_text(base.format(device="serial:console", settings="9600,7E1,rtscts"))
    assert load_config(good, check_files=False).routes[0].settings == "9600,7E1,rtscts"
    for device, settings, words in (
        ("serial:console", "fast", "expected BAUD"),
        ("usb:1209:0001", "9600", "serial:... devices only"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(base.format(device=device, settings=settings))
        with _pytest.raises(ConfigErrors) as caught:
            load_config(bad, check_files=False)
        assert words in str(caught.value) and ":13:" in str(caught.value), str(caught.value)


def test_resume_grace_is_global_and_per_route(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.resume_grace_s == 60.0 and all(r.resume_grace_s is None for r in config.routes)
    text = GOOD.replace('public_host = "gw.example"', 'public_host = "gw.example"\nresume_grace_s = 5')
    text = text.replace('device = "usb:1209:0001"', 'device = "usb:1209:0001"\nresume_grace_s = 0')
    config = load_config(write(tmp_path, text))
    assert config.resume_grace_s == 5.0
    assert [r.resume_grace_s for r in config.routes] == [0.0, None]
    with pytest.raises(ConfigErrors) as info:
        load_config(write(tmp_path, text.replace("resume_grace_s = 0", "resume_grace_s = -1")))
    assert [p.key for p in info.value.problems] == ["route[0].resume_grace_s"]
