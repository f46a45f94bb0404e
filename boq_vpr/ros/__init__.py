"""ROS 2 side of the package: the node, the replay tool and what they are made of.

Message conversion, parameter table, statistics, attention overlay and a DDS client (``client``) for
tests and benchmarks. ``convert``, ``parameters``, ``stats`` and ``attention`` import no ROS
package.
"""
