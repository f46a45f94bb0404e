"""``python -m boq_vpr.node``: runs ``vpr_node`` (``boq_vpr.ros.node``) without a ROS install."""
from .ros.node import main

if __name__ == '__main__':
    main()
