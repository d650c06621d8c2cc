/* The packed format behind vnb_driver.h's API (vnb_driver.c dispatches). Internal: not seen by cffi. */
#ifndef VNB_DRIVER_IMPL_H
#define VNB_DRIVER_IMPL_H
#include "vnb_driver.h"

#define VNB_DRV_INTERNAL __attribute__((visibility("hidden")))

VNB_DRV_INTERNAL int drv_packed_init(struct vnb_drv_vq *q, const struct vnb_mem *mem, uint64_t desc_gpa,
                                     uint64_t driver_gpa, uint64_t device_gpa);
VNB_DRV_INTERNAL int drv_packed_add(struct vnb_drv_vq *q, const struct vnb_seg *segs, uint32_t nsegs,
                                    void *indirect_table, uint64_t indirect_gpa, uint32_t token);
VNB_DRV_INTERNAL void drv_packed_publish(struct vnb_drv_vq *q);
VNB_DRV_INTERNAL int drv_packed_kick_prepare(struct vnb_drv_vq *q);
VNB_DRV_INTERNAL int drv_packed_used_pending(struct vnb_drv_vq *q);
VNB_DRV_INTERNAL int drv_packed_get_used(struct vnb_drv_vq *q, uint32_t *len, uint32_t *token);
VNB_DRV_INTERNAL int drv_packed_enable_cb(struct vnb_drv_vq *q, uint16_t delay);
VNB_DRV_INTERNAL void drv_packed_disable_cb(struct vnb_drv_vq *q);

#endif
