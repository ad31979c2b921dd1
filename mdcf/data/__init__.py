"""Ratings in: MovieLens and custom files, splits, and a synthetic generator.

The public contract of the data layer::

    Ratings, from_dataframe, from_arrays          the container and building one
    read_ratings                                  u.data, ratings.dat, ratings.csv, .inter, zips
    load_movielens, MOVIELENS                      verified downloads, fallbacks, parsed caches
    split, kfold, official_split, Split            train/test splits with cold-start counts
    synthetic, GroundTruth                         ratings from a known low-rank model
    load_criteo, CTRData, CTRSplit, split_ctr      click logs in the Criteo format, cached
    synthetic_ctr, CTRTruth, write_criteo_text     Criteo-shaped clicks from a known model

Example:
  >>> from mdcf import data
  >>> ratings, truth = data.synthetic(300, 200, 3_000, seed=0)
  >>> train, test = data.split(ratings, "random", test_fraction=0.1, seed=0)
  >>> len(train) + len(test)
  3000
"""

from .criteo import CTR_SPLITS, CTRData, CTRSplit, load_criteo, split_ctr, transform_dense
from .criteo_parse import CriteoFormatError
from .criteo_synthetic import KAGGLE_CARDINALITIES, CTRTruth, synthetic_ctr, write_criteo_text
from .movielens import (
    MOVIELENS,
    ChecksumError,
    DatasetUnavailableError,
    MovieLensInfo,
    data_home,
    download_file,
    load_movielens,
    movielens_archive,
)
from .ratings import (
    DUPLICATE_POLICIES,
    DuplicateRatingsWarning,
    Ratings,
    encode_ids,
    from_arrays,
    from_dataframe,
)
from .readers import FORMATS, RatingsFormatError, read_ratings
from .splits import OFFICIAL_SPLITS, SPLIT_METHODS, Split, kfold, official_split, split
from .synthetic import GroundTruth, synthetic, zipf_weights

__all__ = [
    "MOVIELENS",
    "ChecksumError",
    "DatasetUnavailableError",
    "MovieLensInfo",
    "data_home",
    "download_file",
    "load_movielens",
    "movielens_archive",
    "DUPLICATE_POLICIES",
    "DuplicateRatingsWarning",
    "Ratings",
    "encode_ids",
    "from_arrays",
    "from_dataframe",
    "FORMATS",
    "RatingsFormatError",
    "read_ratings",
    "OFFICIAL_SPLITS",
    "SPLIT_METHODS",
    "Split",
    "kfold",
    "official_split",
    "split",
    "GroundTruth",
    "synthetic",
    "zipf_weights",
    "CTR_SPLITS",
    "CTRData",
    "CTRSplit",
    "load_criteo",
    "split_ctr",
    "transform_dense",
    "CriteoFormatError",
    "KAGGLE_CARDINALITIES",
    "CTRTruth",
    "synthetic_ctr",
    "write_criteo_text",
]
