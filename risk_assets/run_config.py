"""The base class of every run configuration the Launchpad shows.

With pydantic's ``use_attribute_docstrings``, the docstring under each field becomes the field's
description in Dagster's config schema, so analysts see what a setting means where they edit it.
"""

from __future__ import annotations

import dagster as dg
from pydantic import ConfigDict


class RunConfig(dg.Config):
    """A ``dg.Config`` whose attribute docstrings describe its fields in the Launchpad."""

    model_config = ConfigDict(use_attribute_docstrings=True)
