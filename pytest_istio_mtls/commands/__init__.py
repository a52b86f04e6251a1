"""The ``pytest-istio-mtls`` command: ``cli`` parses and dispatches (validate, predict, explain, check, cleanup), and
each other subcommand has its module: ``render``, ``importer`` (import), ``update`` (also behind
``--istio-update-expectations``), ``diff`` and ``crosscheck``. ``build-istio`` lives in the build room."""
