# Included before `configfile:`. A config file that is not valid YAML fails here with its
# path, line and column (Snakemake's own message names neither) and nothing runs.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, str(Path(workflow.basedir).parent))

from pipeline_steps.config import read_yaml
from pipeline_steps.errors import UserError

for _path in ["config.yaml", *workflow.config_settings.configfiles]:  # the Snakefile's configfile, then --configfile
    if Path(_path).is_file():
        try:
            read_yaml(_path)
        except UserError as e:
            raise WorkflowError(str(e)) from None
