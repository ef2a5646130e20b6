# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
