"""The three web cabinets (company, supplier, operator): server-rendered Django templates with HTMX.

Every view is scoped by the access helpers in ``access.py``; services live in their apps'
``services.py`` (never in a view)."""
