import dagster as dg

from racedayai_bayes.lib.data.frame import MODEL_DISTANCES

distance_partitions = dg.StaticPartitionsDefinition(list(MODEL_DISTANCES))
