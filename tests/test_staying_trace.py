"""scripts/staying_trace.py: which steps count as lost after the first arrival, and which positions lie beside a
wall."""

import numpy as np

from envs.mazes import Maze


def test_steps_outside_count_only_after_the_first_arrival(load_script):
    script = load_script("staying_trace")
    distance = np.array(
        [
            [2.0, 0.6, 0.4, 0.7, 0.3, 0.9],  # arrives at step 2, out at 3 and 5
            [0.2, 0.8, 0.1, 0.1, 0.1, 0.1],  # starts at the goal, out at 1
            [2.0, 1.0, 0.9, 0.8, 0.7, 0.6],  # never arrives: nothing lost to staying
        ]
    )
    outside = script.outside_after_arrival(distance, radius=0.5)
    assert outside.tolist() == [
        [False, False, False, True, False, True],
        [False, True, False, False, False, False],
        [False] * 6,
    ]


def test_beside_wall_finds_the_wall_sides_of_a_free_cell(load_script):
    script = load_script("staying_trace")
    maze = Maze.from_name("umaze")
    walls = maze.walls
    # a free cell with a wall on its left and a free cell on its right
    row, col = next(
        (r, c) for r, c in maze.free_cells if walls[r, c - 1] and c + 1 < walls.shape[1] and not walls[r, c + 1]
    )
    centre = maze.cell_to_xy(np.array([row, col]))
    points = np.array([centre, centre + [-0.42, 0.0], centre + [0.42, 0.0], centre + [-0.3, 0.0]])
    assert script.beside_wall(maze, points, margin=0.05).tolist() == [False, True, False, False]
    # a wider margin reaches the point 0.3 from the centre (0.1 from the wall's edge, the point's radius included)
    assert script.beside_wall(maze, points[3:], margin=0.15).tolist() == [True]
    # up and down: row 0 is at the top (positive y)
    above, below = walls[row - 1, col], walls[row + 1, col]
    vertical = np.array([centre + [0.0, 0.42], centre + [0.0, -0.42]])
    assert script.beside_wall(maze, vertical, margin=0.05).tolist() == [bool(above), bool(below)]
