"""The spine every layer stands on: errors and exit codes, files, the config, the stage model (manifests, atomic publish), the work directory and the artifact-type table."""
