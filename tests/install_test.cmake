# ctest driver: install the build tree into a scratch prefix, then configure, build and run a
# consumer project that uses find_package(mha). Variables: BUILD_DIR, SOURCE_DIR, WORK_DIR,
# LINK_FLAGS (extra consumer link flags, e.g. a sanitizer runtime), WITH_CLI (bin/mha was built).
file(REMOVE_RECURSE ${WORK_DIR})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix
                RESULT_VARIABLE rc OUTPUT_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install failed: ${rc}")
endif()
set(expected include/mha/attention.h lib/cmake/mha/mhaConfig.cmake)
if(WITH_CLI)
  list(APPEND expected bin/mha)
endif()
foreach(f ${expected})
  if(NOT EXISTS ${WORK_DIR}/prefix/${f})
    message(FATAL_ERROR "not installed: ${f}")
  endif()
endforeach()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/install_consumer -B ${WORK_DIR}/build
                        -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DCMAKE_BUILD_TYPE=Release
                        "-DCMAKE_EXE_LINKER_FLAGS=${LINK_FLAGS}"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "consumer configure failed:\n${out}")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/build RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "consumer build failed:\n${out}")
endif()
execute_process(COMMAND ${WORK_DIR}/build/consumer RESULT_VARIABLE rc OUTPUT_VARIABLE out)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "consumer run failed: ${rc} ${out}")
endif()
message(STATUS "${out}")
# mha::dist, when the build has it: linked through the package config and run as one rank.
if(EXISTS ${WORK_DIR}/build/dist_consumer)
  # (no leak check: Open MPI's own allocations outlive MPI_Finalize)
  execute_process(COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=0 ${WORK_DIR}/build/dist_consumer
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "dist consumer run failed: ${rc} ${out} ${err}")
  endif()
  message(STATUS "${out}")
elseif(EXISTS ${WORK_DIR}/prefix/include/mha/dist.h AND EXISTS ${WORK_DIR}/prefix/lib/libmha_dist.a)
  message(FATAL_ERROR "libmha_dist is installed but the consumer did not find mha::dist")
endif()

file(REMOVE_RECURSE ${WORK_DIR})
