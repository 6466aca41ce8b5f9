"""Sources: the user's own model and data, described in JSON and loaded without unpickling.

A workspace's ``source.json`` holds a *model source* (:mod:`unlearnkit.sources.model`) and a
*data source* (:mod:`unlearnkit.sources.data`); with them any later process rebuilds the model
object and reads the rows a deletion request names by integer id.

Example:
    >>> from unlearnkit.sources import validate_ids
    >>> validate_ids([2, 0], 3)
    [2, 0]
"""

from unlearnkit.sources.data import (
    DATA_KINDS,
    DataSource,
    DataSourceError,
    ImageFilesDataSource,
    NpzDataSource,
    describe_data_source,
    open_data_source,
    parse_data_source,
    validate_ids,
)
from unlearnkit.sources.model import (
    MODEL_KINDS,
    ModelSource,
    apply_state,
    build_model,
    check_model,
    describe_model_source,
    import_model_class,
    load_model,
    load_state_file,
    load_torchscript,
    model_builder,
)

__all__ = [
    "DATA_KINDS",
    "MODEL_KINDS",
    "DataSource",
    "DataSourceError",
    "ImageFilesDataSource",
    "ModelSource",
    "NpzDataSource",
    "apply_state",
    "build_model",
    "check_model",
    "describe_data_source",
    "describe_model_source",
    "import_model_class",
    "load_model",
    "load_state_file",
    "load_torchscript",
    "model_builder",
    "open_data_source",
    "parse_data_source",
    "validate_ids",
]
