"""The browser front-end, served by the API process under ``/ui/``.

Pages are static shells (Jinja2 templates with no user data in them); each page's ES module
reads the JSON API with the same API key a script would use, so the UI has no endpoint or
privilege of its own. See :mod:`app.ui.routes` (pages, headers) and :mod:`app.ui.vendor`
(the pinned third-party files).
"""
