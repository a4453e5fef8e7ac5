-- The Prefect server keeps its state in its own database beside the inspector store.
CREATE DATABASE prefect OWNER inspector;
