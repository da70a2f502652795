"""The pieces `persona-export verify` is made of: the prompts and bounds (data in
templates/), the logits of each engine on the same token ids, and the figures that compare
them. The stage itself is persona_export/stages/verify.py."""
