"""The page at GET /: placeholder until the comparison page is written."""
PAGE = "<!doctype html><title>twinlora</title><p>twinlora serve: the OpenAI API is under /v1.</p>"
