"""Card payments of customers at terminals: a second, worked domain (``docs/sources.md``).

* ``generator.py`` — a small seeded generator (legitimate habits, compromised terminals, stolen
  cards; fraud labels known days later);
* ``definitions.py`` — what the team declares: its event source, label source, feature groups,
  request features and model specification (the only code a team writes to onboard);
* ``pipeline.py`` — one command: archive → batch features → offline store → training set → train →
  promote → online sync → score a transaction through a real ``risk-serve``;
* ``new_feature.ipynb`` — the notebook path: declare a feature, backfill it, compare models.
"""
