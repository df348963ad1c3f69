"""Entry point for the ``feast`` CLI (see .feastignore): the objects of :mod:`features.repo`, built
from the spec that ``loyalty-ml features apply`` rendered into feature_store.yaml beside this file.

The project itself never imports this module; it builds the objects from its settings.
"""

from pathlib import Path

from features.repo import feast_objects
from features.repo_spec import RepoSpec

for _obj in feast_objects(RepoSpec.from_feature_store_yaml(Path(__file__).with_name("feature_store.yaml"))):
    globals()[_obj.name] = _obj
