"""Writes the pickled snapshot edge serves in bench/forwardauth.sh: ORIGIN_PORT OUT [plain]."""

import pickle
import sys

from edge.rules import PathPrefix
from edge.snapshot import BackendService, Compress, ForwardAuth, Headers, Router, Snapshot, Target

port, out = int(sys.argv[1]), sys.argv[2]
plain = len(sys.argv) > 3
middlewares = () if plain else (
    Compress(),
    ForwardAuth(address=f"http://127.0.0.1:{port}/auth", auth_response_headers=("Remote-User",)),
    Headers(frame_deny=True, content_type_nosniff=True),
)
router = Router(name="bench", rule=PathPrefix(("/",)), rule_text="PathPrefix(`/`)", service="bench",
                middlewares=middlewares)
service = BackendService("bench", (Target("o", "127.0.0.1", port),))
with open(out, "wb") as f:
    pickle.dump(Snapshot.build(routers=[router], services=[service]), f)
