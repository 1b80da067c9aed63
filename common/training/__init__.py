"""What both backends are fed, computed once: chat and raw templates (`templates.py`, reading
Jinja files through `common.data.jinja_files`; `chat_templates/` holds the chat formats shipped for models whose files lack
one), tokenization with the loss mask, batching, preference pairs, training objectives, the
learning-rate schedule, sampling settings and long-sequence chunking.

Imports from common/: `errors` and `data` (the example and pair records, the Jinja file reader);
`data` never imports back; never a backend, a job or the CLI, and no mlx or torch at module level.
"""
