"""The QEMU guest runner, now `redirgate.cli.guestvm.qemu` (the demo boots it too).

Re-exported here, private names included, so tests keep importing it from
`tests.support.qemu`.
"""

import tests.support.guest  # noqa: F401  (sets the test cache location first)
from redirgate.cli.guestvm import qemu as _qemu

globals().update({k: v for k, v in vars(_qemu).items() if not k.startswith("__")})
