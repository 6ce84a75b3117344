"""HTTP routers. Each module exposes ``router``; ``app.main.create_app`` mounts them.

Routers listed in ``app.main.PROTECTED_ROUTERS`` get the API-key dependency automatically;
only ``health`` is mounted open.
"""
