"""`edgeft serve`: the verified bytes behind an OpenAI-compatible endpoint, with the registry's
versions and sticky A/B routing live (protocol, engine, catalog, journal, app)."""
