// Everything public in mha.
#pragma once

#include "mha/attention.h"
#include "mha/backward.h"
#include "mha/bert.h"
#include "mha/errors.h"
#include "mha/npy.h"
#include "mha/reference.h"
#include "mha/rope.h"
#include "mha/runtime.h"
#include "mha/tensor.h"
#include "mha/version.h"
