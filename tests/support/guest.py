"""The guest builder, now `redirgate.cli.guestvm.image` (the demo boots it too).

Re-exported here, private names included, so tests keep importing it from
`tests.support.guest`; built guests stay cached in <repo>/.cache/guest.
"""

import os as _os
from pathlib import Path as _Path

_os.environ.setdefault("REDIRGATE_GUEST_CACHE", str(_Path(__file__).resolve().parents[2] / ".cache" / "guest"))

from redirgate.cli.guestvm import image as _image

globals().update({k: v for k, v in vars(_image).items() if not k.startswith("__")})
