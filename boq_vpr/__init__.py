"""boq_vpr: visual place recognition loop closures for SLAM with BoQ.

Data flow: image conversion -> preprocessing -> encoder backend -> map database ->
loop-closure detector -> outputs (ROS messages, metrics, files).
"""

__version__ = '0.1.0'
