"""The fields of ``ckptconv batch``'s output name pattern (``--name-pattern``).

Apart from :mod:`ckptconv.batch` so that the CLI's parser (``ckptconv --help`` lists them)
does not import the batch machinery.
"""

PATTERN_FIELDS = {
    "stem": "the input's name without its checkpoint suffix (model.weights.h5 -> model)",
    "name": "the input's full file name (model.weights.h5)",
    "parent": "the name of the directory holding the input",
    "index": "the input's position in the list, from 0",
}
