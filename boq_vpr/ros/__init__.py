"""ROS 2 side of the node: message conversion, parameter table, statistics, attention overlay and a
DDS client (``client``) for tests and benchmarks. ``convert``, ``parameters``, ``stats`` and
``attention`` import no ROS package."""
