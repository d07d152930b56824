"""Names shared by the evaluation modules."""
from t2i_fast.errors import UserError

METRICS = ("r_precision", "cmd", "fid", "is", "attributes")
FOLDS, MISMATCHED, IS_SPLITS = 10, 99, 10
STATS_VERSION = 1           # bump when the real-side statistics are computed differently


class EvalError(UserError):
    """A problem with the command line or its files; main() prints it as one line."""
