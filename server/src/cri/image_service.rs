use berth_proto::cri::image_service_server::ImageService;
use berth_proto::cri::*;

super::cri_service_impl! {
    impl ImageService {
        handled {}
        unimplemented {
            list_images(ListImagesRequest) -> ListImagesResponse = "ListImages";
            image_status(ImageStatusRequest) -> ImageStatusResponse = "ImageStatus";
            pull_image(PullImageRequest) -> PullImageResponse = "PullImage";
            remove_image(RemoveImageRequest) -> RemoveImageResponse = "RemoveImage";
            image_fs_info(ImageFsInfoRequest) -> ImageFsInfoResponse = "ImageFsInfo";
        }
    }
}
