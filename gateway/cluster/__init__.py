"""Several gateways as one, on Redis (issue 18).

`redis.py` is the trio Redis client (over `redirgate.proto.resp`);
`config.py` reads the `[cluster]` table; `node.py` is this gateway's part in
the cluster: its heartbeat, the presence of its clients, and the requests
other nodes send it.  Without `[cluster]` none of this runs.
"""
