"""Reading scenario files: YAML in, a validated ``Scenario`` (or every problem, each at file:line:column) out.

``loader`` reads a file and its policy files, ``topology`` and ``rows`` its sections, ``resolve`` what a row's
references name, ``resources`` checks the Istio resources, ``checks`` and ``yamlpos`` turn a wrong value into a
positioned diagnostic. Nothing here touches a cluster. The JSON Schema of the format stays at the package's top
(``scenario.schema.json``): its address is written into users' scenario files.
"""
