"""Sparkplug B 3.0: the host application (`TWIN_SPARKPLUG=true`), a second ingest path into the
same pipeline, journal and state as the JSON contract."""
