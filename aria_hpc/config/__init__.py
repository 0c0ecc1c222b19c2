"""One typed config tree: the schema (schema.py), building it from YAML and
overrides (loader.py), and flat views with the keys that may differ between two configs (keys.py).

Defaults live in the dataclasses; a YAML file and dotted ``a.b=c`` overrides only change them.
"""

from aria_hpc.config.keys import EVAL_OVERRIDES, LABEL_IGNORED, MOVED, RESUMABLE_CHANGES, changed_keys, flatten, matches
from aria_hpc.config.loader import (
                                  all_keys,
                                  dump_yaml,
                                  load_config,
                                  move_keys,
                                  read_config_mapping,
                                  read_yaml,
                                  resolve_teacher,
                                  save_resolved,
                                  to_dict,
                                  yaml_problem,
)
from aria_hpc.config.schema import (
                                  AriaConfig,
                                  BankConfig,
                                  BankMode,
                                  Config,
                                  EmbedConfig,
                                  EvalConfig,
                                  JudgeConfig,
                                  LaunchConfig,
                                  LossConfig,
                                  LrSchedule,
                                  Policy,
                                  PoolConfig,
                                  RCConfig,
                                  RegionsConfig,
                                  RunConfig,
                                  Section,
                                  SimulateConfig,
                                  StudentConfig,
                                  TeacherConfig,
                                  TeacherRecipeConfig,
                                  TextEncoderConfig,
                                  TrainConfig,
                                  WorldConfig,
)

__all__ = ["AriaConfig", "BankConfig", "BankMode", "Config", "EVAL_OVERRIDES", "EmbedConfig", "EvalConfig",
           "JudgeConfig", "LABEL_IGNORED", "LaunchConfig", "LossConfig", "LrSchedule", "MOVED", "Policy", "PoolConfig",
           "RCConfig", "RESUMABLE_CHANGES", "RegionsConfig", "RunConfig", "Section", "SimulateConfig", "StudentConfig",
           "TeacherConfig", "TeacherRecipeConfig", "TextEncoderConfig", "TrainConfig", "WorldConfig", "all_keys",
           "changed_keys", "dump_yaml", "flatten", "load_config", "matches", "move_keys", "read_config_mapping",
           "read_yaml", "resolve_teacher", "save_resolved", "to_dict", "yaml_problem"]
